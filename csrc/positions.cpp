// One-pass fill of PoSE position ids from chunk tables: out[b, st_i + k] = pos_start[b, i] + k.
// NumPy needs several full passes over the [B, L] output (np.repeat, then an add); this writes
// each element once, rows split across threads, with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace py = pybind11;

namespace {

void fill_rows(const int64_t* starts, const int64_t* lengths, int64_t* out, int64_t row_begin,
               int64_t row_end, int64_t num_chunks, int64_t row_len) {
  for (int64_t b = row_begin; b < row_end; ++b) {
    int64_t* dst = out + b * row_len;
    const int64_t* s = starts + b * num_chunks;
    const int64_t* l = lengths + b * num_chunks;
    for (int64_t i = 0; i < num_chunks; ++i) {
      const int64_t first = s[i];
      for (int64_t k = 0; k < l[i]; ++k) dst[k] = first + k;
      dst += l[i];
    }
  }
}

py::array_t<int64_t> fill_chunk_ranges(py::array_t<int64_t, py::array::c_style> starts,
                                       py::array_t<int64_t, py::array::c_style> lengths,
                                       int64_t row_len, int num_threads) {
  if (starts.ndim() != 2 || lengths.ndim() != 2 || starts.shape(0) != lengths.shape(0) ||
      starts.shape(1) != lengths.shape(1)) {
    throw std::invalid_argument("starts and lengths must be [B, N] arrays of the same shape");
  }
  const int64_t batch = starts.shape(0), num_chunks = starts.shape(1);
  const int64_t* s = starts.data();
  const int64_t* l = lengths.data();
  for (int64_t b = 0; b < batch; ++b) {
    int64_t total = 0;
    for (int64_t i = 0; i < num_chunks; ++i) {
      if (l[b * num_chunks + i] < 0) throw std::invalid_argument("negative chunk length");
      total += l[b * num_chunks + i];
    }
    if (total != row_len) {
      throw std::invalid_argument("chunk lengths of row " + std::to_string(b) + " sum to " +
                                  std::to_string(total) + ", not " + std::to_string(row_len));
    }
  }
  py::array_t<int64_t> out({batch, row_len});
  int64_t* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    // Small batches are not worth a thread start (~20 us each).
    const int64_t work = batch * row_len;
    int threads = std::max(1, std::min<int>(num_threads, static_cast<int>(work / (1 << 18))));
    threads = static_cast<int>(std::min<int64_t>(threads, std::max<int64_t>(batch, 1)));
    if (threads <= 1) {
      fill_rows(s, l, o, 0, batch, num_chunks, row_len);
    } else {
      std::vector<std::thread> pool;
      const int64_t per = (batch + threads - 1) / threads;
      for (int t = 0; t < threads; ++t) {
        const int64_t begin = t * per, end = std::min(batch, begin + per);
        if (begin >= end) break;
        pool.emplace_back(fill_rows, s, l, o, begin, end, num_chunks, row_len);
      }
      for (auto& th : pool) th.join();
    }
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_positions, m) {
  m.doc() = "Fast fills for pose_megatron.positions";
  m.def("fill_chunk_ranges", &fill_chunk_ranges, py::arg("starts"), py::arg("lengths"),
        py::arg("row_len"), py::arg("num_threads") = 1,
        "[B, row_len] int64 array whose row b holds starts[b,i] .. starts[b,i]+lengths[b,i]-1 "
        "for each chunk i in turn");
}
