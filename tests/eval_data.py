"""A tiny real LLaMA and a character-level tokenizer on disk, shared by the evaluation tests.

The tokenizer maps every printable character to one token, so token counts equal character
counts and prompt lengths in the passkey tests can be checked by hand. Plain helpers; the session
fixture ``tiny_hf_dir`` (tests/conftest.py) saves the model once.
"""

import string

import torch

SPECIALS = ["<unk>", "<s>", "</s>"]
CHARS = sorted(set(string.printable) - set("\x0b\x0c\r"))
VOCAB = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
BOS, EOS = VOCAB["<s>"], VOCAB["</s>"]


def save_char_tokenizer(directory):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(VOCAB, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        clean_up_tokenization_spaces=False,
    )
    fast.save_pretrained(str(directory))
    return directory


def save_tiny_llama(directory, max_position_embeddings=256, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(VOCAB), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_position_embeddings,
        bos_token_id=BOS, eos_token_id=EOS, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(str(directory))
    save_char_tokenizer(directory)
    return directory
