// torch.save files through libtorch's own zip reader/writer and pickler (see
// crates/bergson/src/pickle/ffi.rs for the Rust side and the tree encoding).
//
// Every extern "C" entry catches all C++ exceptions: an error comes back as a
// malloc'd message (without libtorch's C++ backtrace) that Rust frees with
// bd_pickle_free_str. Tensors cross as at::Tensor* (tch's C_tensor*).
//
// Tree encoding, little-endian, one tag byte then its payload:
//   'N' none | 'b' u8 | 'i' i64 | 'f' f64 bits | 's' u64 len + UTF-8
//   'l' / 't' u64 n + n items (list / tuple) | 'd' u64 n + n (key, value)
//   'T' u64 index into the tensor table

#include <ATen/core/Dict.h>
#include <ATen/core/ivalue.h>
#include <ATen/core/List.h>
#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/serialization/export.h>
#include <torch/csrc/jit/serialization/import_read.h>
#include <torch/csrc/jit/serialization/pickler.h>
#include <torch/csrc/jit/serialization/storage_context.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

// Containers nest no deeper than this; deeper input is refused, which also
// stops a self-referencing list from recursing forever.
constexpr int kMaxDepth = 512;

char* dup_message(const char* msg) {
  size_t n = std::strlen(msg);
  char* out = static_cast<char*>(std::malloc(n + 1));
  if (out != nullptr) {
    std::memcpy(out, msg, n + 1);
  }
  return out;
}

// Runs f, turning any exception into *err and `fail`.
template <typename T, typename F>
T guarded(char** err, T fail, F&& f) {
  try {
    return f();
  } catch (const c10::Error& e) {
    *err = dup_message(e.what_without_backtrace());
  } catch (const std::exception& e) {
    *err = dup_message(e.what());
  } catch (...) {
    *err = dup_message("unknown C++ exception");
  }
  return fail;
}

void put_u64(std::string& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) {
    out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }
}

struct Encoder {
  std::string bytes;
  std::vector<at::Tensor> tensors;

  void value(const c10::IValue& v, int depth) {
    if (depth > kMaxDepth) {
      throw std::runtime_error("containers nest deeper than 512 levels");
    }
    if (v.isNone()) {
      bytes.push_back('N');
    } else if (v.isBool()) {
      bytes.push_back('b');
      bytes.push_back(v.toBool() ? 1 : 0);
    } else if (v.isInt()) {
      bytes.push_back('i');
      put_u64(bytes, static_cast<uint64_t>(v.toInt()));
    } else if (v.isDouble()) {
      bytes.push_back('f');
      double d = v.toDouble();
      uint64_t bits = 0;
      std::memcpy(&bits, &d, sizeof bits);
      put_u64(bytes, bits);
    } else if (v.isString()) {
      const std::string& s = v.toStringRef();
      bytes.push_back('s');
      put_u64(bytes, s.size());
      bytes.append(s);
    } else if (v.isTensor()) {
      bytes.push_back('T');
      put_u64(bytes, tensors.size());
      tensors.push_back(v.toTensor());
    } else if (v.isTuple()) {
      const auto& items = v.toTupleRef().elements();
      bytes.push_back('t');
      put_u64(bytes, items.size());
      for (const auto& item : items) {
        value(item, depth + 1);
      }
    } else if (v.isList()) {
      // Covers typed lists (build_intlist, ...) written by TorchScript too.
      auto items = v.toListRef();
      bytes.push_back('l');
      put_u64(bytes, items.size());
      for (const auto& item : items) {
        value(item, depth + 1);
      }
    } else if (v.isGenericDict()) {
      auto dict = v.toGenericDict();
      bytes.push_back('d');
      put_u64(bytes, dict.size());
      for (const auto& entry : dict) {
        value(entry.key(), depth + 1);
        value(entry.value(), depth + 1);
      }
    } else {
      throw std::runtime_error(std::string("it holds a value of type ") + v.tagKind());
    }
  }
};

struct Decoder {
  const uint8_t* p;
  const uint8_t* end;
  at::Tensor* const* tensors;
  size_t ntensors;

  uint8_t u8() {
    if (p >= end) {
      throw std::runtime_error("encoded value ends early");
    }
    return *p++;
  }

  uint64_t u64() {
    if (end - p < 8) {
      throw std::runtime_error("encoded value ends early");
    }
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) {
      v |= static_cast<uint64_t>(p[i]) << (8 * i);
    }
    p += 8;
    return v;
  }

  // A count of items that each take at least one byte, checked against what is left.
  uint64_t count() {
    uint64_t n = u64();
    if (n > static_cast<uint64_t>(end - p)) {
      throw std::runtime_error("encoded container is longer than its input");
    }
    return n;
  }

  c10::IValue value(int depth) {
    if (depth > kMaxDepth) {
      throw std::runtime_error("containers nest deeper than 512 levels");
    }
    switch (u8()) {
      case 'N':
        return c10::IValue();
      case 'b':
        return c10::IValue(u8() != 0);
      case 'i':
        return c10::IValue(static_cast<int64_t>(u64()));
      case 'f': {
        uint64_t bits = u64();
        double d = 0;
        std::memcpy(&d, &bits, sizeof d);
        return c10::IValue(d);
      }
      case 's': {
        uint64_t n = count();
        std::string s(reinterpret_cast<const char*>(p), n);
        p += n;
        return c10::IValue(std::move(s));
      }
      case 'T': {
        uint64_t i = u64();
        if (i >= ntensors || tensors[i] == nullptr || !tensors[i]->defined()) {
          throw std::runtime_error("tensor index out of range or undefined tensor");
        }
        at::Tensor t = *tensors[i];
        // The pickler records the device as the storage location: keep files
        // loadable without map_location. CPU tensors pass through unchanged, so
        // views keep sharing their storage.
        if (!t.device().is_cpu()) {
          t = t.to(at::kCPU);
        }
        return c10::IValue(std::move(t));
      }
      case 'l': {
        uint64_t n = count();
        // Untyped (Any) lists: typed ones pickle as torch.jit._pickle.build_*
        // globals, which torch.load(weights_only=True) refuses.
        c10::impl::GenericList list(c10::AnyType::get());
        list.reserve(n);
        for (uint64_t i = 0; i < n; ++i) {
          list.push_back(value(depth + 1));
        }
        return c10::IValue(std::move(list));
      }
      case 't': {
        uint64_t n = count();
        std::vector<c10::IValue> items;
        items.reserve(n);
        for (uint64_t i = 0; i < n; ++i) {
          items.push_back(value(depth + 1));
        }
        return c10::IValue(c10::ivalue::Tuple::create(std::move(items)));
      }
      case 'd': {
        uint64_t n = count();
        c10::impl::GenericDict dict(c10::AnyType::get(), c10::AnyType::get());
        for (uint64_t i = 0; i < n; ++i) {
          c10::IValue key = value(depth + 1);
          if (!(key.isString() || key.isInt() || key.isBool() || key.isDouble())) {
            throw std::runtime_error(
                std::string("dict keys must be str, int, float or bool, not ") +
                key.tagKind());
          }
          dict.insert_or_assign(std::move(key), value(depth + 1));
        }
        if (dict.size() != n) {
          throw std::runtime_error("dict has duplicate keys");
        }
        return c10::IValue(std::move(dict));
      }
      default:
        throw std::runtime_error("unknown tag in encoded value");
    }
  }
};

}  // namespace

extern "C" {

// An open torch.save archive, then (after bd_pickle_load) its decoded tree.
struct bd_pk {
  std::unique_ptr<caffe2::serialize::PyTorchStreamReader> reader;
  at::DataPtr pickle;
  size_t pickle_len = 0;
  Encoder tree;
};

typedef size_t (*bd_write_fn)(void* ctx, const void* buf, size_t n);

void bd_pickle_free_str(char* s) { std::free(s); }

// Opens the zip archive at `path` and reads its pickle program (data.pkl).
// NULL + *err on failure.
bd_pk* bd_pickle_open(const char* path, char** err) {
  return guarded<bd_pk*>(err, nullptr, [&]() {
    auto pk = std::make_unique<bd_pk>();
    pk->reader = std::make_unique<caffe2::serialize::PyTorchStreamReader>(std::string(path));
    std::tie(pk->pickle, pk->pickle_len) = pk->reader->getRecord("data.pkl");
    return pk.release();
  });
}

const uint8_t* bd_pickle_program(bd_pk* pk, size_t* len) {
  *len = pk->pickle_len;
  return static_cast<const uint8_t*>(pk->pickle.get());
}

// Unpickles onto the CPU with storages shared as in Python, and encodes the
// tree. 0 on success, -1 + *err on failure.
int bd_pickle_load(bd_pk* pk, char** err) {
  return guarded<int>(err, -1, [&]() {
    auto storages = std::make_shared<torch::jit::DeserializationStorageContext>();
    c10::IValue root = torch::jit::readArchiveAndTensors(
        "data", "", "", std::nullopt, std::nullopt, at::Device(at::kCPU), *pk->reader,
        torch::jit::Unpickler::defaultTypeParser, storages);
    pk->tree.value(root, 0);
    return 0;
  });
}

const uint8_t* bd_pickle_tree(bd_pk* pk, size_t* len) {
  *len = pk->tree.bytes.size();
  return reinterpret_cast<const uint8_t*>(pk->tree.bytes.data());
}

size_t bd_pickle_ntensors(bd_pk* pk) { return pk->tree.tensors.size(); }

// A new handle on tensor i (the caller owns and deletes it); NULL if out of range.
at::Tensor* bd_pickle_tensor(bd_pk* pk, size_t i) {
  if (i >= pk->tree.tensors.size()) {
    return nullptr;
  }
  return new at::Tensor(pk->tree.tensors[i]);
}

void bd_pickle_close(bd_pk* pk) { delete pk; }

// Pickles the encoded tree (untagged, protocol 2, as torch.save) and streams
// the zip archive through `write`, which must consume every byte it is given.
// 0 on success, -1 + *err on failure.
int bd_pickle_save(const uint8_t* enc, size_t len, at::Tensor* const* tensors, size_t ntensors,
                   bd_write_fn write, void* ctx, char** err) {
  return guarded<int>(err, -1, [&]() {
    Decoder dec{enc, enc + len, tensors, ntensors};
    c10::IValue root = dec.value(0);
    if (dec.p != dec.end) {
      throw std::runtime_error("trailing bytes after encoded value");
    }
    std::vector<char> program;
    torch::jit::Pickler pickler(
        [&](const char* buf, size_t n) { program.insert(program.end(), buf, buf + n); },
        nullptr, nullptr, nullptr, nullptr, /*tag_aggregates=*/false);
    pickler.protocol();
    pickler.pushIValue(root);
    pickler.stop();
    // Braces: a parenthesised lambda argument would parse as a declaration.
    caffe2::serialize::PyTorchStreamWriter writer{
        [&](const void* buf, size_t n) -> size_t { return write(ctx, buf, n); }};
    torch::jit::writeArchiveAndTensors("data", program.data(), program.size(),
                                       pickler.tensorData(), writer);
    writer.writeEndOfFile();
    return 0;
  });
}

// Where a tensor lies in its storage: the storage's base address and size in
// bytes, and the offset of the first element in elements. NULL + *err for a
// tensor without storage (sparse, undefined).
const void* bd_tensor_storage(const at::Tensor* t, size_t* nbytes, int64_t* offset,
                              char** err) {
  return guarded<const void*>(err, nullptr, [&]() {
    const c10::Storage& storage = t->storage();
    *nbytes = storage.nbytes();
    *offset = t->storage_offset();
    return storage.data();
  });
}

}  // extern "C"
