#include "model_files.h"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "errors.h"

namespace s2mlpv2 {
namespace {

namespace fs = std::filesystem;

// ---- the protobuf wire format, just enough to walk a message's top-level fields
// (https://protobuf.dev/programming-guides/encoding/).

enum WireType : uint64_t { kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5 };
constexpr uint64_t kMetadataPropsField = 14;  // onnx.ModelProto.metadata_props
constexpr uint64_t kEntryKeyField = 1;        // onnx.StringStringEntryProto.key
constexpr uint64_t kEntryValueField = 2;      // onnx.StringStringEntryProto.value

bool readVarint(std::istream& in, uint64_t& value) {
  value = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    const int byte = in.get();
    if (byte == std::char_traits<char>::eof()) return false;
    value |= static_cast<uint64_t>(byte & 0x7F) << shift;
    if ((byte & 0x80) == 0) return true;
  }
  return false;
}

// Calls onField(number, payload) for each length-delimited field numbered `wanted` (any number
// when `wanted` is 0, which no field has); skips every other field without reading it. False when the bytes are not a protobuf
// message.
template <typename OnField>
bool walkMessage(std::istream& in, std::streamoff end, uint64_t wanted, OnField onField) {
  while (in.tellg() < end) {
    uint64_t tag = 0;
    if (!readVarint(in, tag)) return false;
    const uint64_t number = tag >> 3;
    if (number == 0) return false;  // no field has number 0: not a protobuf message
    uint64_t length = 0;
    switch (tag & 7) {
      case kVarint:
        if (!readVarint(in, length)) return false;
        continue;
      case kFixed64:
        length = 8;
        break;
      case kFixed32:
        length = 4;
        break;
      case kLengthDelimited:
        if (!readVarint(in, length)) return false;
        break;
      default:
        return false;  // groups (long deprecated) or garbage
    }
    if (static_cast<uint64_t>(end - in.tellg()) < length) return false;
    if ((tag & 7) == kLengthDelimited && (number == wanted || wanted == 0)) {
      std::string payload(length, '\0');
      if (!in.read(payload.data(), static_cast<std::streamsize>(length))) return false;
      onField(number, payload);
    } else {
      in.seekg(static_cast<std::streamoff>(length), std::ios::cur);
    }
  }
  return in.tellg() == end;
}

std::string readText(const fs::path& path) {
  std::ifstream file(path, std::ios::binary);
  std::stringstream text;
  text << file.rdbuf();
  if (!file) throw Error("cannot read " + path.string());
  return text.str();
}

}  // namespace

std::optional<std::string> findInDirectory(const std::string& directory, const char* const* names, std::size_t count) {
  for (std::size_t i = 0; i < count; ++i) {
    const fs::path candidate = fs::path(directory) / names[i];
    if (fs::is_regular_file(candidate)) return candidate.string();
  }
  return std::nullopt;
}

PackageFiles readPackage(const std::string& directory) {
  const fs::path file = fs::path(directory) / kPackageFile;
  if (!fs::is_regular_file(file)) {
    if (fs::is_regular_file(fs::path(directory) / "summary.json")) {
      throw Error(directory + " was built before packages recorded " + kPackageFile +
                  "; run the same python build_engine.py command again (its finished stages are reused) to write it");
    }
    throw Error(directory + " holds no " + kPackageFile + ", so it is not a build directory; make one with python build_engine.py " +
                "--precision fp16 --out " + directory);
  }
  nlohmann::json package;
  try {
    package = nlohmann::json::parse(readText(file.string()));
  } catch (const nlohmann::json::exception& e) {
    throw Error(file.string() + " is not readable JSON (" + oneLine(e.what(), 120) + "); rebuild with python build_engine.py");
  }
  if (!package.is_object() || package.value("schema", std::string()) != kPackageSchema) {
    throw Error(file.string() + " is not an " + std::string(kPackageSchema) + " file; give a directory built by python build_engine.py");
  }
  const nlohmann::json version = package.value("version", nlohmann::json());
  if (!version.is_number_integer() || version.get<int>() < 1) {
    throw Error(file.string() + " has no valid schema version; rebuild with python build_engine.py");
  }
  if (version.get<int>() > kPackageVersion) {
    throw Error(file.string() + " is " + kPackageSchema + " version " + std::to_string(version.get<int>()) +
                ", newer than the version " + std::to_string(kPackageVersion) +
                " this program reads; update this program or rebuild the package with it");
  }
  PackageFiles found;
  std::string missing;  // the first file a route lacks, for the error where nothing else runs
  try {
    const auto complete = [&](const nlohmann::json& route) {
      for (const auto& name : route.at("files")) {
        if (!fs::is_regular_file(fs::path(directory) / name.get<std::string>())) {
          if (missing.empty()) missing = name.get<std::string>() + ", which its " + route.at("runtime").get<std::string>() + " route needs";
          return false;
        }
      }
      return true;
    };
    const auto artifactPath = [&](const nlohmann::json& route) {
      return (fs::path(directory) / route.at("artifact").get<std::string>()).string();
    };
    const nlohmann::json& routes = package.at("routes");
    const std::string graph = package.value("graph", nlohmann::json()).is_string() ? package["graph"].get<std::string>() : "";
    const std::string cpuRoute =
        package.value("cpu_route", nlohmann::json()).is_string() ? package["cpu_route"].get<std::string>() : "";
    for (const auto& route : routes) {
      const std::string runtime = route.at("runtime").get<std::string>();
      if ((runtime == "tensorrt" || runtime == "tensorrt-rtx") && !found.plan && complete(route)) found.plan = artifactPath(route);
    }
    for (const auto& route : routes) {  // the recorded CPU route, where OpenVINO reads it
      const std::string artifact = route.at("artifact").get<std::string>();
      const bool readable = route.at("runtime").get<std::string>() == "openvino" || (!graph.empty() && artifact == graph);
      if (artifact == cpuRoute && readable && complete(route)) found.openVino = artifactPath(route);
    }
    for (const auto& route : routes) {
      if (!found.openVino && route.at("runtime").get<std::string>() == "openvino" && complete(route)) found.openVino = artifactPath(route);
    }
    if (!found.openVino && !graph.empty() && fs::is_regular_file(fs::path(directory) / graph)) {
      found.openVino = (fs::path(directory) / graph).string();
    }
  } catch (const nlohmann::json::exception& e) {
    throw Error(file.string() + " is incomplete or damaged (" + oneLine(e.what(), 120) + "); rebuild with python build_engine.py");
  }
  if (!found.plan && !found.openVino && !missing.empty()) {
    throw Error(directory + " lacks " + missing + "; copy the whole build directory, or rebuild it with python build_engine.py");
  }
  return found;
}

std::optional<std::string> onnxMetadata(const std::string& onnxPath, const std::string& key) {
  std::ifstream in(onnxPath, std::ios::binary | std::ios::ate);
  if (!in) throw Error("cannot read " + onnxPath);
  const std::streamoff end = in.tellg();
  in.seekg(0);
  std::optional<std::string> found;
  const bool ok = walkMessage(in, end, kMetadataPropsField, [&](uint64_t, const std::string& entry) {
    std::istringstream fields(entry);
    std::string entryKey, entryValue;
    walkMessage(fields, static_cast<std::streamoff>(entry.size()), 0, [&](uint64_t number, const std::string& text) {
      if (number == kEntryKeyField) entryKey = text;
      if (number == kEntryValueField) entryValue = text;
    });
    if (entryKey == key) found = entryValue;
  });
  if (!ok) throw Error(onnxPath + " is not a readable ONNX file (truncated or not protobuf); re-run the export stage");
  return found;
}

ModelCard readCardFile(const std::string& path) {
  const fs::path suffix = fs::path(path).extension();
  if (suffix == ".plan" || suffix == ".engine") return planCard(path, readPlanSidecar(path));
  if (suffix == ".onnx") {
    const std::optional<std::string> card = onnxMetadata(path, kCardKey);
    if (!card) {
      throw Error(path + " carries no model card (no " + kCardKey +
                  " metadata): it was not written by this project's export; export it with python -m pipeline.export");
    }
    return parseCard(*card, "the card in " + path);
  }
  return parseCard(readText(path), path);
}

std::optional<std::string> irPrecisionHint(const std::string& xmlPath) {
  const fs::path path = fs::path(xmlPath).replace_extension(".openvino.json");
  if (!fs::is_regular_file(path)) return std::nullopt;
  try {
    const nlohmann::json sidecar = nlohmann::json::parse(readText(path));
    return sidecar.at("inference_precision_hint").get<std::string>();
  } catch (const nlohmann::json::exception& e) {
    throw Error(path.string() + " is not a valid IR sidecar (" + oneLine(e.what(), 160) +
                "); rebuild the IR, or give --inference-precision");
  }
}

PlanSidecar readPlanSidecar(const std::string& planPath) {
  const fs::path path = fs::path(planPath).replace_extension(".json");
  if (!fs::is_regular_file(path)) {
    throw Error(path.string() + " is missing: a plan is loaded only with the sidecar written beside it; rebuild the plan");
  }
  try {
    const nlohmann::json d = nlohmann::json::parse(readText(path));
    PlanSidecar sidecar;
    sidecar.flavour = d.at("flavour").get<std::string>();
    sidecar.flavourVersion = d.at("flavour_version").get<std::string>();
    sidecar.batchProfile = d.at("batch_profile").get<std::array<int64_t, 3>>();
    sidecar.inputShape = d.at("input_shape").get<std::array<int64_t, 3>>();
    sidecar.inputName = d.value("input_name", sidecar.inputName);
    sidecar.outputName = d.value("output_name", sidecar.outputName);
    const auto card = d.find("card");
    if (card != d.end() && card->is_object()) sidecar.cardJson = card->dump();
    return sidecar;
  } catch (const nlohmann::json::exception& e) {
    throw Error(path.string() + " is not a valid plan sidecar (" + oneLine(e.what(), 160) + "); rebuild the plan");
  }
}

ModelCard planCard(const std::string& planPath, const PlanSidecar& sidecar) {
  const fs::path sidecarFile = fs::path(planPath).replace_extension(".json");
  if (sidecar.cardJson) return parseCard(*sidecar.cardJson, "the card in " + sidecarFile.string());
  const std::string directory = fs::path(planPath).parent_path().string();
  const char* const graphs[] = {"model-int8.onnx", "model-fp16.onnx", "model.onnx"};
  const std::optional<std::string> graph = findInDirectory(directory.empty() ? "." : directory, graphs, std::size(graphs));
  if (!graph) {
    throw Error(sidecarFile.string() + " carries no model card and no ONNX graph of the build is beside " + planPath +
                "; keep the plan in its build directory, or rebuild it");
  }
  return readCardFile(*graph);
}

}  // namespace s2mlpv2
