"""The command-line tools, one module each, installed as console scripts (setup.py).

``pose-<tool>`` (dashes for underscores), ``python -m pose_megatron.commands.<tool>`` and
``python tools/<tool>.py`` all call the module's ``run(argv=None)``: the tool under the error
convention of pose_megatron.errors (one ``error:`` line, exit status 2), then exit. ``main(argv)`` is
the tool itself, for scripts and tests that call it in-process.
"""
