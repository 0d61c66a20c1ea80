// Python bindings of voxmix's C++ ops (module kernels._C). Loaded by kernels/_ext.py.
#include <torch/extension.h>

#include "mae_loss/mae_loss.h"
#include "patchify/patchify.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "voxmix C++ ops: CPU patchify/unpatchify and the fused masked MAE loss";
  m.def("patchify_cpu", &patchify_cpu, "(B,C,D,H,W) -> (B,N,C*pd*ph*pw)", py::arg("x"), py::arg("pd"),
        py::arg("ph"), py::arg("pw"));
  m.def("unpatchify_cpu", &unpatchify_cpu, "(B,N,V) -> (B,C,D,H,W)", py::arg("patches"), py::arg("pd"),
        py::arg("ph"), py::arg("pw"), py::arg("c"), py::arg("d"), py::arg("h"), py::arg("w"));
  m.def("mae_loss_cpu", &mae_loss_cpu, "-> (per_sample (B,) fp32, grad or empty)", py::arg("pred"), py::arg("x"),
        py::arg("mask_idx"), py::arg("pd"), py::arg("ph"), py::arg("pw"), py::arg("norm_pix"), py::arg("eps"),
        py::arg("need_grad"));
}
