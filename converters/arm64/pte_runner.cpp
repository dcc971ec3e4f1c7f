// A torch-free ExecuTorch runner for the emulated ARM64 check: the executorch aarch64 wheel's own runtime, XNNPACK
// backend and kernel libraries (none of which links libtorch), serving requests on stdin/stdout so that one
// process under qemu runs every batch.
//
//   pte_runner MODEL.pte
//
// Request: uint32 count (0 ends the process), then that many .npy arrays (little-endian, C order), the forward
// method's arguments in order. Reply: uint32 count and the outputs as .npy, or uint32 0xFFFFFFFF, uint32 length
// and a message. A request that cannot be read ends the process after the error reply (the stream is lost).
#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

using executorch::aten::ScalarType;
using executorch::extension::Module;
using executorch::extension::TensorPtr;
using executorch::extension::make_tensor_ptr;
using executorch::runtime::EValue;

namespace {

struct Npy {
  ScalarType type;
  std::vector<int32_t> shape;
  std::vector<uint8_t> data;
};

struct DType {
  const char* descr;
  ScalarType type;
  size_t size;
};

const DType kTypes[] = {{"<i8", ScalarType::Long, 8},  {"<i4", ScalarType::Int, 4},    {"<f4", ScalarType::Float, 4},
                        {"<f8", ScalarType::Double, 8}, {"<f2", ScalarType::Half, 2},   {"|i1", ScalarType::Char, 1},
                        {"|u1", ScalarType::Byte, 1},   {"|b1", ScalarType::Bool, 1}};

const DType& by_descr(const std::string& descr) {
  for (const auto& t : kTypes) if (descr == t.descr) return t;
  throw std::runtime_error("unsupported npy dtype " + descr);
}

const DType& by_type(ScalarType type) {
  for (const auto& t : kTypes) if (type == t.type) return t;
  throw std::runtime_error("unsupported output dtype " + std::to_string(static_cast<int>(type)));
}

void read_exact(void* out, size_t bytes) {
  if (bytes && std::fread(out, 1, bytes, stdin) != bytes) throw std::runtime_error("stdin closed mid-request");
}

uint32_t read_u32() {
  uint32_t value = 0;
  read_exact(&value, 4);
  return value;
}

Npy read_npy() {
  char magic[8];
  read_exact(magic, 8);
  if (std::memcmp(magic, "\x93NUMPY", 6) != 0) throw std::runtime_error("request is not .npy");
  uint32_t header_length = 0;
  if (magic[6] == 1) {
    uint16_t short_length = 0;
    read_exact(&short_length, 2);
    header_length = short_length;
  } else {
    header_length = read_u32();
  }
  std::string header(header_length, '\0');
  read_exact(&header[0], header_length);
  if (header.find("'fortran_order': True") != std::string::npos) throw std::runtime_error("fortran order");
  auto d = header.find("'descr':");
  auto q1 = header.find('\'', d + 8), q2 = header.find('\'', q1 + 1);
  const DType& dtype = by_descr(header.substr(q1 + 1, q2 - q1 - 1));
  Npy npy{dtype.type, {}, {}};
  auto s = header.find('(', header.find("'shape':")), e = header.find(')', s);
  std::string dims = header.substr(s + 1, e - s - 1);
  size_t count = 1, start = 0;
  while (start < dims.size()) {
    size_t comma = dims.find(',', start);
    std::string token = dims.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    if (token.find_first_not_of(' ') != std::string::npos) {
      npy.shape.push_back(std::stoi(token));
      count *= static_cast<size_t>(npy.shape.back());
    }
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  npy.data.resize(count * dtype.size);
  read_exact(npy.data.data(), npy.data.size());
  return npy;
}

void append_npy(std::string& out, const executorch::aten::Tensor& t) {
  std::string shape = "(";
  for (auto s : t.sizes()) shape += std::to_string(s) + ",";
  if (t.dim() > 1) shape.pop_back();
  shape += ")";
  std::string header = std::string("{'descr': '") + by_type(t.scalar_type()).descr +
                       "', 'fortran_order': False, 'shape': " + shape + ", }";
  header.append((64 - (10 + header.size() + 1) % 64) % 64, ' ');
  header += '\n';
  uint16_t length = static_cast<uint16_t>(header.size());
  out.append("\x93NUMPY\x01\x00", 8);
  out.append(reinterpret_cast<const char*>(&length), 2);
  out += header;
  out.append(static_cast<const char*>(t.const_data_ptr()), t.nbytes());
}

void write_reply(const std::string& reply) {
  std::fwrite(reply.data(), 1, reply.size(), stdout);
  std::fflush(stdout);
}

std::string error_reply(const std::string& message) {
  uint32_t marker = 0xFFFFFFFFu, length = static_cast<uint32_t>(message.size());
  std::string reply(reinterpret_cast<const char*>(&marker), 4);
  reply.append(reinterpret_cast<const char*>(&length), 4);
  return reply + message;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: pte_runner MODEL.pte" << std::endl;
    return 2;
  }
  Module module(argv[1], Module::LoadMode::File);
  if (module.load_method("forward") != executorch::runtime::Error::Ok) {
    std::cerr << "pte_runner: cannot load the forward method of " << argv[1] << std::endl;
    return 2;
  }
  while (true) {
    uint32_t count = 0;
    if (std::fread(&count, 4, 1, stdin) != 1 || count == 0) return 0;
    std::vector<Npy> arrays;
    try {
      for (uint32_t i = 0; i < count; ++i) arrays.push_back(read_npy());
    } catch (const std::exception& exc) {
      write_reply(error_reply(std::string("unreadable request: ") + exc.what()));
      return 2;
    }
    try {
      std::vector<TensorPtr> tensors;
      std::vector<EValue> inputs;
      for (auto& a : arrays) {
        tensors.push_back(make_tensor_ptr(a.shape, a.data.data(), {}, {}, a.type));
        inputs.emplace_back(*tensors.back());
      }
      auto result = module.execute("forward", inputs);
      if (!result.ok()) throw std::runtime_error("execute failed, error " + std::to_string(static_cast<int>(result.error())));
      std::string reply(4, '\0');
      uint32_t n = 0;
      for (const auto& value : result.get()) {
        if (!value.isTensor()) continue;
        append_npy(reply, value.toTensor());
        ++n;
      }
      std::memcpy(&reply[0], &n, 4);
      write_reply(reply);
    } catch (const std::exception& exc) {
      write_reply(error_reply(exc.what()));
    }
  }
}
