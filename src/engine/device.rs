//! Where a model computes: the GPU devices its layers are offloaded to, how many, and where its KV
//! cache lives. endorm chooses the devices itself (the machine's GPUs, else its integrated GPUs,
//! as llama.cpp would) and hands llama.cpp that list, so what it reports is what it asked for;
//! the split of layers follows llama.cpp's rule (`llama-model.cpp`, `load_tensors`): the last
//! `n_gpu_layers` of the blocks and the output layer go to the devices, and each block's KV cache
//! goes with it.
//!
//! llama.cpp says nothing when it finds no GPU: a GPU build on a machine without a driver
//! (llama.cpp's Vulkan backend registers no device then) computes every layer on the CPU while its
//! log claims the layers were offloaded. [`Placement::fallback_warning`] says so instead.

use llama_cpp_2::{list_llama_ggml_backend_devices, LlamaBackendDeviceType};

/// The GPU backends compiled into this build.
const GPU_BACKENDS: &[&str] = &[
    #[cfg(feature = "cuda")]
    "CUDA",
    #[cfg(feature = "metal")]
    "Metal",
    #[cfg(feature = "vulkan")]
    "Vulkan",
];

/// One ggml device a model's layers can go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Its index in ggml's device list (`LlamaModelParams::with_devices`).
    pub index: usize,
    /// ggml's name and description, e.g. `Vulkan0: NVIDIA GeForce RTX 4090`.
    pub label: String,
}

/// The local GPUs llama.cpp would offload to by default: the discrete (and software) GPUs, or the
/// integrated ones when there is none. RPC workers are chosen by `rpc.rs`.
pub fn local_gpus() -> Vec<Device> {
    let devices = list_llama_ggml_backend_devices();
    let of_type = |kind: LlamaBackendDeviceType| -> Vec<Device> {
        devices
            .iter()
            .filter(|d| d.device_type == kind && d.backend != "RPC")
            .map(device)
            .collect()
    };
    let gpus = of_type(LlamaBackendDeviceType::Gpu);
    if gpus.is_empty() {
        of_type(LlamaBackendDeviceType::IntegratedGpu)
    } else {
        gpus
    }
}

/// The devices at these ggml indices (the RPC workers' and GPUs `rpc.rs` chose).
pub fn at(indices: &[usize]) -> Vec<Device> {
    let devices = list_llama_ggml_backend_devices();
    indices
        .iter()
        .filter_map(|&i| devices.iter().find(|d| d.index == i))
        .map(device)
        .collect()
}

fn device(d: &llama_cpp_2::LlamaBackendDevice) -> Device {
    Device {
        index: d.index,
        label: if d.description.is_empty() || d.description == d.name {
            d.name.clone()
        } else {
            format!("{}: {}", d.name, d.description)
        },
    }
}

/// Where a loaded model's layers and KV cache are.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Placement {
    /// The devices holding the offloaded layers (ggml's `Vulkan0: <description>`); empty when
    /// every layer is on the CPU.
    pub devices: Vec<String>,
    /// Layers on those devices, of `n_layers`.
    pub gpu_layers: u32,
    /// The layers llama.cpp offloads: the model's blocks and its output layer.
    pub n_layers: u32,
    /// Blocks whose KV cache is on the devices (the output layer has none), of `n_layers - 1`.
    pub kv_gpu_layers: u32,
    /// Layers that were asked for (`n_gpu_layers`; `u32::MAX` for all).
    pub asked: u32,
}

impl Placement {
    /// The placement of a model of `n_blocks` blocks with `n_gpu_layers` asked for on `devices`.
    pub fn new(devices: &[Device], n_gpu_layers: u32, n_blocks: u32) -> Placement {
        let n_layers = n_blocks.saturating_add(1);
        let gpu_layers = if devices.is_empty() {
            0
        } else {
            n_gpu_layers.min(n_layers)
        };
        Placement {
            devices: if gpu_layers == 0 {
                Vec::new()
            } else {
                devices.iter().map(|d| d.label.clone()).collect()
            },
            gpu_layers,
            n_layers,
            kv_gpu_layers: gpu_layers.saturating_sub(1),
            asked: n_gpu_layers,
        }
    }

    /// Where the layers are: the devices, or `CPU`.
    pub fn device(&self) -> String {
        if self.devices.is_empty() {
            "CPU".to_owned()
        } else {
            self.devices.join(", ")
        }
    }

    /// Where the KV cache is: `CPU`, the devices, or both when the blocks are split.
    pub fn kv_cache(&self) -> String {
        let blocks = self.n_layers - 1;
        match self.kv_gpu_layers {
            0 => "CPU".to_owned(),
            n if n == blocks => self.device(),
            n => format!(
                "{} ({n} layers), CPU ({} layers)",
                self.device(),
                blocks - n
            ),
        }
    }

    /// A warning when layers were asked of a GPU and none went to one; `None` otherwise.
    pub fn fallback_warning(&self) -> Option<String> {
        if self.asked == 0 || self.gpu_layers > 0 {
            return None;
        }
        let asked = match self.asked {
            u32::MAX => "every layer".to_owned(),
            n => format!("{n} GPU layers"),
        };
        Some(if GPU_BACKENDS.is_empty() {
            format!(
                "{asked} asked for, but this endorm has no GPU backend (build it with --features \
                 cuda, metal or vulkan): every layer runs on the CPU"
            )
        } else {
            format!(
                "{asked} asked for, but the {} backend found no GPU (no driver, or none that \
                 works: `vulkaninfo --summary` / `nvidia-smi` tell): every layer runs on the CPU",
                GPU_BACKENDS.join("/")
            )
        })
    }
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} layers on {}, KV cache on {}",
            if self.devices.is_empty() {
                self.n_layers
            } else {
                self.gpu_layers
            },
            self.n_layers,
            self.device(),
            self.kv_cache()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu() -> Vec<Device> {
        vec![Device {
            index: 1,
            label: "Vulkan0: llvmpipe".into(),
        }]
    }

    #[test]
    fn more_layers_than_the_model_has_is_all_of_them() {
        let all = Placement::new(&gpu(), 99, 30);
        assert_eq!(
            (all.gpu_layers, all.n_layers, all.kv_gpu_layers),
            (31, 31, 30)
        );
        let every = Placement::new(&gpu(), u32::MAX, 30);
        assert_eq!((every.gpu_layers, every.kv_gpu_layers), (31, 30));
        assert_eq!(all.device(), "Vulkan0: llvmpipe");
        assert_eq!(all.kv_cache(), "Vulkan0: llvmpipe");
        assert_eq!(all.fallback_warning(), None);
        assert_eq!(
            all.to_string(),
            "31/31 layers on Vulkan0: llvmpipe, KV cache on Vulkan0: llvmpipe"
        );
    }

    #[test]
    fn a_partial_offload_splits_the_kv_cache_with_the_blocks() {
        // llama.cpp offloads the output layer first, then the last blocks.
        let part = Placement::new(&gpu(), 11, 30);
        assert_eq!((part.gpu_layers, part.kv_gpu_layers), (11, 10));
        assert_eq!(
            part.kv_cache(),
            "Vulkan0: llvmpipe (10 layers), CPU (20 layers)"
        );
        // The output layer alone holds no KV cache.
        assert_eq!(Placement::new(&gpu(), 1, 30).kv_cache(), "CPU");
    }

    #[test]
    fn no_gpu_layers_or_no_gpu_is_the_cpu() {
        let cpu = Placement::new(&gpu(), 0, 30);
        assert_eq!((cpu.device(), cpu.kv_cache()), ("CPU".into(), "CPU".into()));
        assert_eq!(cpu.fallback_warning(), None, "none asked for");
        assert_eq!(cpu.to_string(), "31/31 layers on CPU, KV cache on CPU");
        let none = Placement::new(&[], 99, 30);
        assert_eq!((none.gpu_layers, none.device()), (0, "CPU".into()));
        let warning = none.fallback_warning().unwrap();
        assert!(
            warning.contains("99 GPU layers") && warning.contains("every layer runs on the CPU"),
            "{warning}"
        );
    }
}
