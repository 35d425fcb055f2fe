// A small C ABI over FAISS's C++ API, compiled only with the `faiss` cargo feature
// (src/query/ann/faiss.rs binds it). Debian's libfaiss-dev ships the C API's headers but not
// its library, so these few entry points stand in for it. Every function catches C++
// exceptions (FAISS reports bad factory strings, bad files and I/O failures by throwing) and
// returns -1, leaving the message for bergson_faiss_last_error(); 0 means success.

#include <cstdint>
#include <exception>
#include <string>

#include <faiss/IVFlib.h>
#include <faiss/Index.h>
#include <faiss/IndexIVF.h>
#include <faiss/index_factory.h>
#include <faiss/index_io.h>

namespace {

thread_local std::string last_error;

template <typename F>
int guarded(F&& f) {
    try {
        f();
        return 0;
    } catch (const std::exception& e) {
        last_error = e.what();
    } catch (...) {
        last_error = "unknown C++ exception";
    }
    return -1;
}

faiss::Index* as_index(void* p) { return static_cast<faiss::Index*>(p); }
const faiss::Index* as_index(const void* p) { return static_cast<const faiss::Index*>(p); }

}  // namespace

extern "C" {

const char* bergson_faiss_last_error() { return last_error.c_str(); }

int bergson_faiss_index_factory(int d, const char* description, void** out) {
    return guarded([&] {
        *out = faiss::index_factory(d, description, faiss::METRIC_INNER_PRODUCT);
    });
}

void bergson_faiss_free(void* index) { delete as_index(index); }

int bergson_faiss_train(void* index, int64_t n, const float* x) {
    return guarded([&] { as_index(index)->train(n, x); });
}

int bergson_faiss_add(void* index, int64_t n, const float* x) {
    return guarded([&] { as_index(index)->add(n, x); });
}

int bergson_faiss_search(const void* index, int64_t n, const float* x, int64_t k,
                         float* distances, int64_t* labels) {
    return guarded([&] { as_index(index)->search(n, x, k, distances, labels); });
}

int64_t bergson_faiss_ntotal(const void* index) { return as_index(index)->ntotal; }

int bergson_faiss_dim(const void* index) { return as_index(index)->d; }

int bergson_faiss_is_inner_product(const void* index) {
    return as_index(index)->metric_type == faiss::METRIC_INNER_PRODUCT;
}

// Sets nprobe on the index's inverted-file level, wherever it sits (also under a
// pre-transform such as PCA or OPQ); *applied says whether there was one.
int bergson_faiss_set_nprobe(void* index, int64_t nprobe, int* applied) {
    return guarded([&] {
        faiss::IndexIVF* ivf = faiss::ivflib::try_extract_index_ivf(as_index(index));
        *applied = ivf != nullptr;
        if (ivf) {
            ivf->nprobe = static_cast<size_t>(nprobe);
        }
    });
}

int bergson_faiss_write(const void* index, const char* path) {
    return guarded([&] { faiss::write_index(as_index(index), path); });
}

// Reads an index; with `mmap`, inverted lists stay in the file (IO_FLAG_MMAP | READ_ONLY, as
// Bergson reads its shards).
int bergson_faiss_read(const char* path, int mmap, void** out) {
    return guarded([&] {
        int flags = mmap ? (faiss::IO_FLAG_MMAP | faiss::IO_FLAG_READ_ONLY) : 0;
        *out = faiss::read_index(path, flags);
    });
}

}  // extern "C"
