//! libtorch set-up: devices, numeric precisions and threads.

use crate::{Error, Result};
use tch::{Device, Kind};

/// Model precision (`--precision`), as Bergson names it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// bfloat16.
    Bf16,
    /// float16.
    Fp16,
    /// float32 (Bergson's default).
    #[default]
    Fp32,
    /// float64.
    Fp64,
}

impl Precision {
    /// The libtorch dtype.
    pub fn kind(self) -> Kind {
        match self {
            Precision::Bf16 => Kind::BFloat16,
            Precision::Fp16 => Kind::Half,
            Precision::Fp32 => Kind::Float,
            Precision::Fp64 => Kind::Double,
        }
    }

    /// The numpy dtype name Bergson writes as `base_dtype` in info.json.
    pub fn numpy_name(self) -> &'static str {
        numpy_name(self.kind())
    }

    /// Bytes per element.
    pub fn size_of(self) -> usize {
        match self {
            Precision::Bf16 | Precision::Fp16 => 2,
            Precision::Fp32 => 4,
            Precision::Fp64 => 8,
        }
    }
}

/// numpy's name for a floating dtype (`bfloat16` as ml_dtypes spells it).
pub fn numpy_name(kind: Kind) -> &'static str {
    match kind {
        Kind::BFloat16 => "bfloat16",
        Kind::Half => "float16",
        Kind::Float => "float32",
        Kind::Double => "float64",
        Kind::Int64 => "int64",
        Kind::Int => "int32",
        _ => "unknown",
    }
}

/// Parses `cpu`, `cuda` or `cuda:N` into a device, checking that CUDA is there.
pub fn parse_device(s: &str) -> Result<Device> {
    let dev = match s {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(n) => Device::Cuda(n),
            None => {
                return Err(Error::input(format!(
                    "unknown device '{s}': use cpu, cuda or cuda:N"
                )))
            }
        },
    };
    if let Device::Cuda(n) = dev {
        let count = tch::Cuda::device_count() as usize;
        if n >= count {
            return Err(Error::input(format!(
                "--device {s}: this binary sees {count} CUDA device(s); build with `--features cuda` on a GPU machine or use --device cpu"
            )));
        }
    }
    Ok(dev)
}
