// Loads an exported policy and runs one inference on an all-zero observation of batch 1.
//   run_policy policy.pt
// Prints the observation keys and shapes the policy expects and the action it returns.
#include <torch/script.h>

#include <iostream>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: run_policy POLICY.pt\n";
    return 2;
  }
  torch::jit::ExtraFilesMap extra{{"metadata.json", ""}};
  torch::jit::Module policy;
  try {
    policy = torch::jit::load(argv[1], torch::kCPU, extra);
  } catch (const c10::Error& error) {
    std::cerr << "error: cannot load " << argv[1] << ": " << error.what_without_backtrace() << "\n";
    return 1;
  }
  policy.eval();
  auto keys = policy.run_method("obs_keys").toList();
  auto shapes = policy.run_method("input_shapes").toList();
  auto dtypes = policy.run_method("input_dtypes").toList();

  std::vector<torch::Tensor> observations;
  for (size_t i = 0; i < keys.size(); ++i) {
    std::vector<int64_t> shape{1};
    for (const auto& dim : shapes.get(i).toIntVector()) shape.push_back(dim);
    auto dtype = dtypes.get(i).toStringRef() == "uint8" ? torch::kUInt8 : torch::kFloat32;
    observations.push_back(torch::zeros(shape, torch::TensorOptions().dtype(dtype)));
    std::cout << "input " << keys.get(i).toStringRef() << " " << observations.back().sizes() << " "
              << dtypes.get(i).toStringRef() << "\n";
  }
  torch::NoGradGuard no_grad;
  auto action = policy.forward({observations}).toTensor();
  std::cout << "action";
  for (int64_t j = 0; j < action.size(1); ++j) std::cout << " " << action[0][j].item<float>();
  std::cout << "\n";
  return 0;
}
