// PoSE sample index builder: which document(s) every training sample is cut from.
//
// Must equal pose_megatron/data/sample_index.py (the NumPy reference) bit for bit; the
// algorithm is described there. In short:
//   skip: candidates = documents of the split with length >= train_len; sample s is candidate
//         perm_e(s mod m) of epoch e = s / m.
//   pack: candidates = non-empty documents; each epoch visits them in perm_e order and closes a
//         pack as soon as it holds >= train_len tokens (the epoch's unfinished last pack is
//         dropped); a sample is a pack, i.e. a run of doc_order.
// perm_e is a keyed Feistel bijection on [0, 2^bits) with cycle walking, so any entry is computed
// independently: the skip index is embarrassingly parallel and needs no sort and no shuffle pass.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace py = pybind11;

namespace {

constexpr int kRounds = 4;

inline uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

// Keyed bijection of [0, n).
struct Permutation {
  uint64_t n;
  int left_bits, right_bits;
  uint64_t keys[kRounds];
  // Round r's function of the right half, tabulated when the halves are <= 16 bits (every
  // corpus below 2^32 documents): a lookup replaces the 64-bit mixer, the same values. The
  // tables are at most 4 x 64k x 2 bytes and are hot in L1/L2 through the whole build.
  std::vector<uint16_t> table[kRounds];
  bool tabulated = false;

  Permutation(uint64_t n_, uint64_t seed, uint64_t epoch) : n(n_) {
    int bits = 2;
    while ((uint64_t(1) << bits) < n) ++bits;
    left_bits = bits - bits / 2;
    right_bits = bits / 2;
    uint64_t base = mix64(mix64(seed) + epoch);
    for (int r = 0; r < kRounds; ++r) keys[r] = mix64(base + uint64_t(r));
    if (left_bits <= 16) {
      int wl = left_bits, wr = right_bits;
      for (int r = 0; r < kRounds; ++r) {
        table[r].resize(size_t(1) << wr);
        for (uint64_t x = 0; x < table[r].size(); ++x)
          table[r][x] = uint16_t(round_function(r, x, wl));
        std::swap(wl, wr);
      }
      tabulated = true;
    }
  }

  inline uint64_t round_function(int r, uint64_t right, int out_bits) const {
    return mix64(right ^ keys[r]) & ((uint64_t(1) << out_bits) - 1);
  }

  inline uint64_t feistel(uint64_t x) const {
    int wl = left_bits, wr = right_bits;
    for (int r = 0; r < kRounds; ++r) {
      uint64_t right = x & ((uint64_t(1) << wr) - 1);
      uint64_t left = x >> wr;
      uint64_t f = tabulated ? uint64_t(table[r][right]) : round_function(r, right, wl);
      // (L, R) -> (R, L ^ F(R)): the halves swap widths every round.
      x = (right << wl) | (left ^ f);
      std::swap(wl, wr);
    }
    return x;
  }

  inline uint64_t operator()(uint64_t k) const {
    if (n <= 1) return 0;
    uint64_t y = feistel(k);
    while (y >= n) y = feistel(y);  // cycle walking keeps it a bijection of [0, n)
    return y;
  }
};

int resolve_threads(int threads) {
  if (threads > 0) return threads;
  unsigned hw = std::thread::hardware_concurrency();
  return hw ? int(hw) : 1;
}

// Runs fn(lo, hi) over [0, n) split into `threads` contiguous blocks.
// Items below `grain` per thread are not worth a thread (~64k cheap items by default).
template <class Fn>
void parallel_for(int64_t n, int threads, Fn fn, int64_t grain = 65536) {
  int64_t t = std::min<int64_t>(threads, std::max<int64_t>(1, n / grain));
  if (t <= 1) {
    fn(int64_t(0), n);
    return;
  }
  std::vector<std::thread> pool;
  int64_t step = (n + t - 1) / t;
  for (int64_t i = 0; i < t; ++i) {
    int64_t lo = i * step, hi = std::min(n, lo + step);
    if (lo >= hi) break;
    pool.emplace_back(fn, lo, hi);
  }
  for (auto& th : pool) th.join();
}

// The .idx lengths start at byte 34 of a page-aligned map, so they are not 4-byte aligned:
// read them through memcpy (a plain load on x86/aarch64) instead of copying the array.
struct UnalignedLengths {
  const char* p;
  inline int32_t operator[](int64_t i) const {
    int32_t v;
    std::memcpy(&v, p + 4 * i, 4);
    return v;
  }
};

// std::vector whose resize() leaves ints uninitialised: the builders overwrite every element,
// and zero-filling a Pile-scale index first is a whole extra pass over its memory.
template <class T>
struct NoInit : std::allocator<T> {
  template <class U>
  struct rebind {
    using other = NoInit<U>;
  };
  NoInit() = default;
  template <class U>
  NoInit(const NoInit<U>&) {}
  template <class U>
  void construct(U* p) {
    ::new (static_cast<void*>(p)) U;
  }
  template <class U, class... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};
template <class T>
using Vec = std::vector<T, NoInit<T>>;

// Documents of [beg, end) whose length passes min_len, in ascending order. One pass over the
// lengths (the largest array in play): each block compacts its hits into a scratch buffer of the
// block's size (only the written prefix is ever touched), then the blocks are concatenated.
template <class Lengths>
Vec<int32_t> candidates(Lengths lengths, int64_t beg, int64_t end, int32_t min_len, int threads) {
  int64_t n = end - beg;
  int64_t t = std::min<int64_t>(threads, std::max<int64_t>(1, n / 65536));
  int64_t step = (n + t - 1) / std::max<int64_t>(t, 1);
  std::vector<int64_t> counts(t + 1, 0);
  std::vector<Vec<int32_t>> parts(t);
  parallel_for(t, int(t), [&](int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; ++b) {
      int64_t a = beg + b * step, z = std::min(end, a + step);
      Vec<int32_t>& part = parts[b];
      part.resize(std::max<int64_t>(z - a, 0) + 1);  // +1: the branch-free fill writes one past
      int32_t* dst = part.data();
      int64_t w = 0;
      for (int64_t d = a; d < z; ++d) {
        // Branch-free: the test is a coin flip on real corpora.
        dst[w] = int32_t(d);
        w += lengths[d] >= min_len;
      }
      counts[b + 1] = w;
    }
  }, 1);
  for (int64_t b = 0; b < t; ++b) counts[b + 1] += counts[b];
  Vec<int32_t> out(counts[t]);
  parallel_for(t, int(t), [&](int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; ++b) {
      std::memcpy(out.data() + counts[b], parts[b].data(),
                  sizeof(int32_t) * size_t(counts[b + 1] - counts[b]));
      Vec<int32_t>().swap(parts[b]);
    }
  }, 1);
  return out;
}

template <class V>
py::array_t<typename V::value_type> to_numpy(V&& v) {
  using T = typename V::value_type;
  auto* heap = new V(std::move(v));
  py::capsule owner(heap, [](void* p) { delete reinterpret_cast<V*>(p); });
  return py::array_t<T>({py::ssize_t(heap->size())}, {py::ssize_t(sizeof(T))}, heap->data(),
                        owner);
}

// out[k] = cand[perm(k)] for k in [lo, hi). The reads of cand are random (a cache miss each at
// Pile scale), so permute a tile first and then gather it with prefetches in flight.
void gather(const Permutation& perm, const int32_t* cand, int64_t lo, int64_t hi, int32_t* out) {
  constexpr int64_t kTile = 1024, kAhead = 32;
  uint64_t idx[kTile];
  for (int64_t a = lo; a < hi; a += kTile) {
    int64_t n = std::min(kTile, hi - a);
    if (perm.n <= 1) {
      for (int64_t i = 0; i < n; ++i) idx[i] = 0;
    } else {
      // Branch-free first pass (independent chains of multiplies overlap in the core), then
      // cycle-walk the few entries that fell outside [0, n).
      for (int64_t i = 0; i < n; ++i) idx[i] = perm.feistel(uint64_t(a + i));
      for (int64_t i = 0; i < n; ++i)
        while (idx[i] >= perm.n) idx[i] = perm.feistel(idx[i]);
    }
    for (int64_t i = 0; i < std::min(kAhead, n); ++i) __builtin_prefetch(cand + idx[i]);
    for (int64_t i = 0; i < n; ++i) {
      if (i + kAhead < n) __builtin_prefetch(cand + idx[i + kAhead]);
      out[a + i] = cand[idx[i]];
    }
  }
}

struct Result {
  Vec<int32_t> doc_order;
  Vec<int64_t> sample_start;  // empty for skip: sample s is doc_order[s]
  int64_t epochs = 0;
};

template <class Lengths>
Result build(Lengths lengths, int64_t num_docs, int64_t beg, int64_t end, int64_t train_len,
             int64_t num_samples, uint64_t seed, bool pack, int threads) {
  if (beg < 0 || end > num_docs || beg > end)
    throw std::invalid_argument("document range [" + std::to_string(beg) + ", " +
                                std::to_string(end) + ") outside [0, " +
                                std::to_string(num_docs) + ")");
  if (train_len < 1) throw std::invalid_argument("train_len must be >= 1");
  if (end - beg >= (int64_t(1) << 31))
    throw std::invalid_argument("more than 2^31 documents in one split");
  threads = resolve_threads(threads);
  Result res;
  Vec<int32_t> cand =
      candidates(lengths, beg, end, pack ? 1 : int32_t(std::min<int64_t>(train_len, INT32_MAX)),
                 threads);
  const uint64_t m = cand.size();
  if (m == 0) return res;  // the caller names the file in its error

  if (!pack) {
    int64_t total = num_samples < 0 ? int64_t(m) : num_samples;
    res.epochs = (total + int64_t(m) - 1) / int64_t(m);
    res.doc_order.resize(total);
    int32_t* out = res.doc_order.data();
    for (int64_t e = 0; e < res.epochs; ++e) {
      Permutation perm(m, seed, uint64_t(e));
      int64_t first = e * int64_t(m), count = std::min<int64_t>(m, total - first);
      parallel_for(count, threads, [&, first](int64_t lo, int64_t hi) {
        gather(perm, cand.data(), lo, hi, out + first);
      });
    }
    return res;
  }

  int64_t epoch_tokens = 0;
  for (int32_t d : cand) epoch_tokens += lengths[d];
  if (epoch_tokens < train_len) return res;
  Vec<int32_t> order(m);
  res.sample_start.push_back(0);
  const int64_t want = num_samples;  // < 0: one epoch
  if (want == 0) return res;
  for (int64_t e = 0;; ++e) {
    Permutation perm(m, seed, uint64_t(e));
    parallel_for(int64_t(m), threads, [&](int64_t lo, int64_t hi) {
      gather(perm, cand.data(), lo, hi, order.data());
    });
    res.epochs = e + 1;
    // The greedy scan is sequential but is one add and one compare per document.
    int64_t acc = 0, kept = 0;
    size_t base = res.doc_order.size();
    bool done = false;
    for (uint64_t k = 0; k < m; ++k) {
      acc += lengths[order[k]];
      if (acc >= train_len) {
        kept = int64_t(k) + 1;
        res.sample_start.push_back(int64_t(base) + kept);
        acc = 0;
        if (want >= 0 && int64_t(res.sample_start.size()) - 1 == want) {
          done = true;
          break;
        }
      }
    }
    res.doc_order.insert(res.doc_order.end(), order.begin(), order.begin() + kept);
    if (done || want < 0) break;
  }
  return res;
}

py::tuple pack_result(Result&& r, bool pack) {
  py::object starts = py::none();
  if (pack) starts = to_numpy(std::move(r.sample_start));
  return py::make_tuple(to_numpy(std::move(r.doc_order)), starts, r.epochs);
}

py::tuple build_from_lengths(py::array_t<int32_t, py::array::c_style> lengths, int64_t beg,
                             int64_t end, int64_t train_len, int64_t num_samples, uint64_t seed,
                             bool pack, int threads) {
  if (lengths.ndim() != 1) throw std::invalid_argument("lengths must be 1-D int32");
  const int32_t* ptr = lengths.data();
  int64_t n = lengths.shape(0);
  Result r;
  {
    py::gil_scoped_release release;
    r = build(ptr, n, beg, end, train_len, num_samples, seed, pack, threads);
  }
  return pack_result(std::move(r), pack);
}

// Reads the sequence lengths straight from a Megatron .idx file (memory-mapped, never copied):
// "MMIDIDX\0\0", u64 version 1, u8 dtype code, u64 sequence count, u64 document count, then
// int32 lengths[sequence count], ...
py::tuple build_from_idx(const std::string& idx_path, int64_t beg, int64_t end, int64_t train_len,
                         int64_t num_samples, uint64_t seed, bool pack, int threads) {
  Result r;
  {
    py::gil_scoped_release release;
    int fd = ::open(idx_path.c_str(), O_RDONLY);
    if (fd < 0) throw std::runtime_error(idx_path + ": cannot open: " + std::strerror(errno));
    struct stat st;
    char header[34];
    if (::fstat(fd, &st) != 0 || st.st_size < 34 || ::pread(fd, header, 34, 0) != 34) {
      ::close(fd);
      throw std::runtime_error(idx_path + ": not a Megatron .idx file (shorter than its header)");
    }
    auto fail_fd = [&](const std::string& why) {
      ::close(fd);
      throw std::runtime_error(idx_path + ": " + why);
    };
    if (std::memcmp(header, "MMIDIDX\0\0", 9) != 0) fail_fd("bad header (not a Megatron .idx file)");
    uint64_t version, count;
    std::memcpy(&version, header + 9, 8);
    std::memcpy(&count, header + 18, 8);
    if (version != 1) fail_fd("unsupported .idx version " + std::to_string(version));
    if (34 + count * 4 > uint64_t(st.st_size))
      fail_fd("truncated: header declares " + std::to_string(count) + " sequences, file has " +
              std::to_string(st.st_size) + " bytes");
    // Map only the header and the lengths, populated in one go: faulting the pages in one by one
    // costs more than the whole index build.
    size_t size = 34 + count * 4;
    void* map = ::mmap(nullptr, size, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, 0);
    ::close(fd);
    if (map == MAP_FAILED) throw std::runtime_error(idx_path + ": mmap failed");
    const char* bytes = static_cast<const char*>(map);
    UnalignedLengths lengths{bytes + 34};
    try {
      r = build(lengths, int64_t(count), beg, end < 0 ? int64_t(count) : end, train_len,
                num_samples, seed, pack, threads);
    } catch (...) {
      ::munmap(map, size);
      throw;
    }
    ::munmap(map, size);
  }
  return pack_result(std::move(r), pack);
}

py::array_t<int64_t> permutation(uint64_t n, uint64_t seed, uint64_t epoch) {
  Vec<int64_t> out(n);
  Permutation perm(n, seed, epoch);
  for (uint64_t k = 0; k < n; ++k) out[k] = int64_t(perm(k));
  return to_numpy(std::move(out));
}

}  // namespace

PYBIND11_MODULE(_sample_index, m) {
  m.doc() = "PoSE sample index builder (C++ twin of pose_megatron.data.sample_index)";
  m.def("build_from_lengths", &build_from_lengths, py::arg("lengths"), py::arg("beg"),
        py::arg("end"), py::arg("train_len"), py::arg("num_samples"), py::arg("seed"),
        py::arg("pack"), py::arg("threads") = 0,
        "(doc_order int32, sample_start int64 or None, epochs); num_samples < 0: one epoch");
  m.def("build_from_idx", &build_from_idx, py::arg("idx_path"), py::arg("beg"), py::arg("end"),
        py::arg("train_len"), py::arg("num_samples"), py::arg("seed"), py::arg("pack"),
        py::arg("threads") = 0, "as build_from_lengths, reading lengths from a Megatron .idx");
  m.def("permutation", &permutation, py::arg("n"), py::arg("seed"), py::arg("epoch"),
        "the epoch's document permutation of [0, n) (for tests)");
}
