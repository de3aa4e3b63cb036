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
// The builder runs it backwards: out[k] = cand[perm(k)] is the same array as
// out[perm^-1(j)] = cand[j], and the second form enumerates the candidates in order while it
// reads the lengths, so the candidate array (a Pile-scale write, its page faults and a random
// reload per sample) is never built; the random stores cost about what the random loads did.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdlib>
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

  // Undoes feistel(): round r is inverted with round r's widths, last round first.
  inline uint64_t feistel_inverse(uint64_t x) const {
    for (int r = kRounds - 1; r >= 0; --r) {
      int wl = (r % 2 == 0) ? left_bits : right_bits, wr = (r % 2 == 0) ? right_bits : left_bits;
      uint64_t right = x >> wl;  // round r put its input's right half on top
      uint64_t f = tabulated ? uint64_t(table[r][right]) : round_function(r, right, wl);
      uint64_t left = (x & ((uint64_t(1) << wl) - 1)) ^ f;
      x = (left << wr) | right;
    }
    return x;
  }

  inline uint64_t inverse(uint64_t k) const {
    if (n <= 1) return 0;
    uint64_t y = feistel_inverse(k);
    while (y >= n) y = feistel_inverse(y);  // walking the cycle backwards inverts the walk
    return y;
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
  // Large arrays on transparent huge pages (where the kernel allows it): the index is written
  // at random positions, and 2 MB pages take most page walks off those stores and make first
  // touch 512x fewer faults (the whole Pile-scale build 15-25% faster here).
  T* allocate(size_t n) {
    size_t bytes = n * sizeof(T);
    if (bytes < kHuge) return std::allocator<T>::allocate(n);
    void* p = nullptr;
    if (posix_memalign(&p, kHuge, bytes) != 0) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
    ::madvise(p, bytes, MADV_HUGEPAGE);
#endif
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t n) {
    if (n * sizeof(T) < kHuge) return std::allocator<T>::deallocate(p, n);
    std::free(p);
  }
  static constexpr size_t kHuge = size_t(1) << 21;
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

// The split [beg, end) cut into one contiguous block per thread, with the number of candidates
// (documents whose length passes min_len) before each block and the candidates' total tokens:
// the first of the builder's passes over the lengths; every later pass ranks candidates from
// its block's first_rank, so no candidate array is ever stored.
struct Blocks {
  int64_t beg = 0, end = 0, step = 1;
  int32_t min_len = 1;
  std::vector<int64_t> first_rank;  // size blocks + 1; back() is the candidate count
  int64_t tokens = 0;
  int64_t count() const { return int64_t(first_rank.size()) - 1; }
};

template <class Lengths>
Blocks count_candidates(Lengths lengths, int64_t beg, int64_t end, int32_t min_len, int threads) {
  Blocks bl;
  bl.beg = beg;
  bl.end = end;
  bl.min_len = min_len;
  int64_t n = end - beg;
  int64_t t = std::min<int64_t>(threads, std::max<int64_t>(1, n / 65536));
  bl.step = std::max<int64_t>((n + t - 1) / t, 1);
  bl.first_rank.assign(t + 1, 0);
  std::vector<int64_t> tokens(t, 0);
  parallel_for(t, int(t), [&](int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; ++b) {
      int64_t a = beg + b * bl.step, z = std::min(end, a + bl.step), hits = 0, sum = 0;
      for (int64_t d = a; d < z; ++d) {
        int32_t len = lengths[d];
        bool hit = len >= min_len;  // branch-free: the test is a coin flip on real corpora
        hits += hit;
        sum += hit ? len : 0;
      }
      bl.first_rank[b + 1] = hits;
      tokens[b] = sum;
    }
  }, 1);
  for (int64_t b = 0; b < t; ++b) {
    bl.first_rank[b + 1] += bl.first_rank[b];
    bl.tokens += tokens[b];
  }
  return bl;
}

template <class V>
py::array_t<typename V::value_type> to_numpy(V&& v) {
  using T = typename V::value_type;
  auto* heap = new V(std::move(v));
  py::capsule owner(heap, [](void* p) { delete reinterpret_cast<V*>(p); });
  return py::array_t<T>({py::ssize_t(heap->size())}, {py::ssize_t(sizeof(T))}, heap->data(),
                        owner);
}

// Stores of the scatter: each lands on a random cache line of a Pile-scale array, so on x86 they
// bypass the cache (no read-for-ownership of a line that is written once per 16 samples;
// ~10-15% faster here). The fence makes them visible before the thread reports done.
#if defined(__SSE2__)
inline void store_streaming(int32_t* p, int32_t v) { _mm_stream_si32(p, v); }
inline void store_fence() { _mm_sfence(); }
#else
inline void store_streaming(int32_t* p, int32_t v) { *p = v; }
inline void store_fence() {}
#endif

// One epoch of the index: docs[k] = cand[perm(k)] for k < count (and lens[k] = its length when
// lens is given), written as docs[perm^-1(j)] = cand[j] while the candidates are enumerated in
// order. Each thread takes its block; candidates are compacted tile by tile (branch-free), then
// inverted and stored. The stores are a cache miss each at Pile scale and bound the build;
// prefetching them, or partitioning them by destination first, measured no faster here.
template <class Lengths>
void scatter_epoch(Lengths lengths, const Blocks& bl, const Permutation& perm, int64_t count,
                   int32_t* docs, int32_t* lens) {
  constexpr int64_t kTile = 1024;
  parallel_for(bl.count(), int(bl.count()), [&](int64_t lo, int64_t hi) {
    int32_t tile[kTile + 1];  // +1: the branch-free compaction writes one past
    for (int64_t b = lo; b < hi; ++b) {
      int64_t a = bl.beg + b * bl.step, z = std::min(bl.end, a + bl.step);
      uint64_t rank = uint64_t(bl.first_rank[b]);
      for (int64_t d0 = a; d0 < z; d0 += kTile) {
        int64_t d1 = std::min(z, d0 + kTile), w = 0;
        for (int64_t d = d0; d < d1; ++d) {
          tile[w] = int32_t(d);
          w += lengths[d] >= bl.min_len;
        }
        for (int64_t i = 0; i < w; ++i) {
          uint64_t k = perm.inverse(rank + uint64_t(i));
          if (int64_t(k) >= count) continue;  // only the last, partial epoch skips
          store_streaming(docs + k, tile[i]);
          if (lens) store_streaming(lens + k, lengths[tile[i]]);
        }
        rank += uint64_t(w);
      }
    }
    store_fence();
  }, 1);
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
  Blocks bl = count_candidates(lengths, beg, end,
                               pack ? 1 : int32_t(std::min<int64_t>(train_len, INT32_MAX)),
                               threads);
  const uint64_t m = uint64_t(bl.first_rank.back());
  if (m == 0) return res;  // the caller names the file in its error

  if (!pack) {
    int64_t total = num_samples < 0 ? int64_t(m) : num_samples;
    res.epochs = (total + int64_t(m) - 1) / int64_t(m);
    res.doc_order.resize(total);
    for (int64_t e = 0; e < res.epochs; ++e) {
      int64_t first = e * int64_t(m), count = std::min<int64_t>(m, total - first);
      scatter_epoch(lengths, bl, Permutation(m, seed, uint64_t(e)), count,
                    res.doc_order.data() + first, nullptr);
    }
    return res;
  }

  if (bl.tokens < train_len) return res;
  Vec<int32_t> order(m), order_len(m);  // the lengths ride along so the scan reads in order
  res.sample_start.push_back(0);
  const int64_t want = num_samples;  // < 0: one epoch
  if (want == 0) return res;
  for (int64_t e = 0;; ++e) {
    scatter_epoch(lengths, bl, Permutation(m, seed, uint64_t(e)), int64_t(m), order.data(),
                  order_len.data());
    res.epochs = e + 1;
    // The greedy scan is sequential but is one add and one compare per document.
    int64_t acc = 0, kept = 0;
    size_t base = res.doc_order.size();
    bool done = false;
    for (uint64_t k = 0; k < m; ++k) {
      acc += order_len[k];
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
