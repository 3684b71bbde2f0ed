// Loads a soundloc export with TensorFlow Serving's loader, tensorflow::LoadSavedModel,
// replays its warm-up records and runs both signatures: the closest this repository gets
// to TF Serving without Docker (tests/test_cc_loader.py builds and runs it).
//
//   load_saved_model EXPORT_DIR OUT_DIR IMAGE_FILE WAV_FILE IMAGE_F32 WAVEFORM_F32
//
// IMAGE_FILE and WAV_FILE are file bytes for `serving_default`; IMAGE_F32 and
// WAVEFORM_F32 hold one little-endian float32 instance each ([S, S, 3] and [T]) for
// `serving_tensors`.  Each output goes to OUT_DIR/<signature>.<output>.f32 (float32
// values), and one line per step is printed ("warmup 3 requests", "<signature> ok").
// Exit status 1 with one "error: ..." line on any failure.

#include <cstdint>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "tensorflow/cc/saved_model/loader.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor.pb.h"
#include "tensorflow/core/public/session.h"

namespace {

// Where TF Serving looks for warm-up requests inside a version directory.
constexpr char kWarmupPath[] = "assets.extra/tf_serving_warmup_requests";

struct Failure {
  std::string message;
};

std::string ReadFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw Failure{"cannot read " + path};
  std::ostringstream data;
  data << file.rdbuf();
  return data.str();
}

// ---------------------------------------------------------------------------
// The warm-up file: TFRecord framing around PredictionLog protos.  Both are read by hand
// (the wheel ships no TF Serving protos): varints and length-delimited fields only.

std::vector<std::string> ReadTfRecords(const std::string& path) {
  const std::string data = ReadFile(path);
  std::vector<std::string> records;
  size_t pos = 0;
  while (pos < data.size()) {
    // uint64 length, uint32 masked CRC of the length, payload, uint32 masked CRC.
    if (pos + 12 > data.size()) throw Failure{"truncated TFRecord header in " + path};
    uint64_t length;
    std::memcpy(&length, data.data() + pos, 8);
    pos += 12;
    if (length > data.size() - pos || data.size() - pos - length < 4) {
      throw Failure{"truncated TFRecord payload in " + path};
    }
    records.emplace_back(data.substr(pos, length));
    pos += length + 4;
  }
  return records;
}

uint64_t ReadVarint(const std::string& data, size_t* pos) {
  uint64_t value = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (*pos >= data.size()) throw Failure{"truncated varint in a warm-up record"};
    const uint8_t byte = static_cast<uint8_t>(data[(*pos)++]);
    value |= static_cast<uint64_t>(byte & 0x7f) << shift;
    if (!(byte & 0x80)) return value;
  }
  throw Failure{"varint longer than 10 bytes in a warm-up record"};
}

// The length-delimited fields of one message: (field number, bytes); others are skipped.
std::vector<std::pair<int, std::string>> Fields(const std::string& data) {
  std::vector<std::pair<int, std::string>> fields;
  size_t pos = 0;
  while (pos < data.size()) {
    const uint64_t key = ReadVarint(data, &pos);
    const int number = static_cast<int>(key >> 3);
    switch (key & 7) {
      case 0: ReadVarint(data, &pos); break;
      case 1: pos += 8; break;
      case 5: pos += 4; break;
      case 2: {
        const uint64_t length = ReadVarint(data, &pos);
        if (length > data.size() - pos) throw Failure{"truncated field in a warm-up record"};
        fields.emplace_back(number, data.substr(pos, length));
        pos += length;
        break;
      }
      default: throw Failure{"unsupported wire type in a warm-up record"};
    }
  }
  return fields;
}

struct Request {
  std::string signature = "serving_default";
  std::vector<std::pair<std::string, tensorflow::Tensor>> inputs;
};

// PredictionLog.predict_log (6) -> PredictLog.request (1) -> PredictRequest:
// model_spec (1, ModelSpec.signature_name = 3) and inputs (2, map<string, TensorProto>).
Request ParsePredictionLog(const std::string& record) {
  Request request;
  for (const auto& [log_field, predict_log] : Fields(record)) {
    if (log_field != 6) continue;
    for (const auto& [field, predict_request] : Fields(predict_log)) {
      if (field != 1) continue;
      for (const auto& [part, value] : Fields(predict_request)) {
        if (part == 1) {
          for (const auto& [spec_field, text] : Fields(value)) {
            if (spec_field == 3 && !text.empty()) request.signature = text;
          }
        } else if (part == 2) {
          std::string key;
          tensorflow::TensorProto proto;
          for (const auto& [entry_field, text] : Fields(value)) {
            if (entry_field == 1) key = text;
            if (entry_field == 2 && !proto.ParseFromString(text)) {
              throw Failure{"unreadable TensorProto in a warm-up record"};
            }
          }
          tensorflow::Tensor tensor;
          if (!tensor.FromProto(proto)) throw Failure{"invalid tensor for input " + key};
          request.inputs.emplace_back(key, tensor);
        }
      }
    }
  }
  if (request.inputs.empty()) throw Failure{"a warm-up record holds no predict request"};
  return request;
}

// ---------------------------------------------------------------------------
// Running a signature the way TF Serving's Predict does: feeds and fetches by the
// SignatureDef's tensor names.

std::vector<std::pair<std::string, tensorflow::Tensor>> Run(
    const tensorflow::SavedModelBundle& bundle, const Request& request) {
  const auto& signatures = bundle.meta_graph_def.signature_def();
  const auto found = signatures.find(request.signature);
  if (found == signatures.end()) throw Failure{"no signature " + request.signature};
  const tensorflow::SignatureDef& signature = found->second;
  std::vector<std::pair<std::string, tensorflow::Tensor>> feeds;
  for (const auto& [key, tensor] : request.inputs) {
    const auto info = signature.inputs().find(key);
    if (info == signature.inputs().end()) {
      throw Failure{request.signature + " has no input " + key};
    }
    feeds.emplace_back(info->second.name(), tensor);
  }
  std::vector<std::string> keys, names;
  for (const auto& [key, info] : signature.outputs()) {
    keys.push_back(key);
    names.push_back(info.name());
  }
  std::vector<tensorflow::Tensor> outputs;
  const absl::Status status = bundle.session->Run(feeds, names, {}, &outputs);
  if (!status.ok()) {
    throw Failure{request.signature + " failed: " + std::string(status.message())};
  }
  std::vector<std::pair<std::string, tensorflow::Tensor>> named;
  for (size_t i = 0; i < keys.size(); ++i) named.emplace_back(keys[i], outputs[i]);
  return named;
}

void WriteOutputs(const std::string& out_dir, const std::string& signature,
                  const std::vector<std::pair<std::string, tensorflow::Tensor>>& outputs) {
  for (const auto& [key, tensor] : outputs) {
    if (tensor.dtype() != tensorflow::DT_FLOAT) throw Failure{key + " is not float32"};
    const auto values = tensor.flat<float>();
    const std::string path = out_dir + "/" + signature + "." + key + ".f32";
    std::ofstream file(path, std::ios::binary);
    file.write(reinterpret_cast<const char*>(values.data()),
               static_cast<std::streamsize>(values.size() * sizeof(float)));
    if (!file) throw Failure{"cannot write " + path};
  }
  std::cout << signature << " ok" << std::endl;
}

tensorflow::Tensor Strings(const std::string& bytes) {
  tensorflow::Tensor tensor(tensorflow::DT_STRING, tensorflow::TensorShape({1}));
  tensor.flat<tensorflow::tstring>()(0) = bytes;
  return tensor;
}

tensorflow::Tensor Floats(const std::string& bytes, const tensorflow::TensorShape& shape) {
  tensorflow::Tensor tensor(tensorflow::DT_FLOAT, shape);
  if (bytes.size() != tensor.NumElements() * sizeof(float)) {
    throw Failure{"float32 input of " + std::to_string(bytes.size()) + " bytes does not fit " +
                  shape.DebugString()};
  }
  std::memcpy(tensor.flat<float>().data(), bytes.data(), bytes.size());
  return tensor;
}

// The static shape of a signature input without its batch dimension.
tensorflow::TensorShape InstanceShape(const tensorflow::SavedModelBundle& bundle,
                                      const std::string& signature, const std::string& key) {
  const auto& proto = bundle.meta_graph_def.signature_def().at(signature).inputs().at(key)
                          .tensor_shape();
  tensorflow::TensorShape shape({1});
  for (int i = 1; i < proto.dim_size(); ++i) shape.AddDim(proto.dim(i).size());
  return shape;
}

void Main(int argc, char** argv) {
  if (argc != 7) {
    throw Failure{"usage: load_saved_model EXPORT_DIR OUT_DIR IMAGE_FILE WAV_FILE IMAGE_F32 "
                  "WAVEFORM_F32"};
  }
  const std::string export_dir = argv[1], out_dir = argv[2];
  tensorflow::SavedModelBundle bundle;
  const absl::Status loaded = tensorflow::LoadSavedModel(
      tensorflow::SessionOptions(), tensorflow::RunOptions(), export_dir,
      {"serve"}, &bundle);
  if (!loaded.ok()) throw Failure{"LoadSavedModel: " + std::string(loaded.message())};
  std::cout << "loaded " << export_dir << std::endl;

  // Warm-up: every record must run, as TF Serving requires before it serves the version.
  const std::vector<std::string> records = ReadTfRecords(export_dir + "/" + kWarmupPath);
  for (const std::string& record : records) Run(bundle, ParsePredictionLog(record));
  std::cout << "warmup " << records.size() << " requests" << std::endl;

  Request bytes;
  bytes.inputs = {{"image_bytes", Strings(ReadFile(argv[3]))},
                  {"wav_bytes", Strings(ReadFile(argv[4]))}};
  WriteOutputs(out_dir, "serving_default", Run(bundle, bytes));

  Request tensors;
  tensors.signature = "serving_tensors";
  tensors.inputs = {
      {"image", Floats(ReadFile(argv[5]), InstanceShape(bundle, "serving_tensors", "image"))},
      {"waveform",
       Floats(ReadFile(argv[6]), InstanceShape(bundle, "serving_tensors", "waveform"))}};
  WriteOutputs(out_dir, "serving_tensors", Run(bundle, tensors));
}

}  // namespace

int main(int argc, char** argv) {
  try {
    Main(argc, argv);
  } catch (const Failure& failure) {
    std::cerr << "error: " << failure.message << std::endl;
    return 1;
  }
  return 0;
}
