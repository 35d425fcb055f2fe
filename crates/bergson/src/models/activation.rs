//! The MLP activation functions of transformers' `ACT2FN`, by their config.json names.

use tch::Tensor;

/// An MLP activation, named as config.json's `hidden_act` / `activation_function` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu`, `gelu_python`: exact erf GELU.
    Gelu,
    /// `gelu_new`, `gelu_pytorch_tanh`, `gelu_python_tanh`, `gelu_fast`, `gelu_accurate`: the tanh
    /// approximation (the same function written in several ways; we use the fused kernel).
    GeluTanh,
    /// `gelu_10`: exact GELU clipped to [-10, 10].
    Gelu10,
    /// `quick_gelu`: `x * sigmoid(1.702 x)`.
    QuickGelu,
    /// `silu`, `swish`.
    Silu,
    /// `relu`.
    Relu,
    /// `relu2`: `relu(x)^2`.
    Relu2,
    /// `relu6`.
    Relu6,
    /// `sigmoid`.
    Sigmoid,
    /// `tanh`.
    Tanh,
    /// `linear`: identity.
    Linear,
}

/// Every accepted name, for error messages.
pub const ACTIVATION_NAMES: &str = "gelu, gelu_python, gelu_new, gelu_pytorch_tanh, gelu_python_tanh, gelu_fast, gelu_accurate, gelu_10, quick_gelu, silu, swish, relu, relu2, relu6, sigmoid, tanh, linear";

impl Activation {
    /// Parses a transformers activation name; `None` when we do not implement it.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "gelu" | "gelu_python" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_python_tanh" | "gelu_fast"
            | "gelu_accurate" => Activation::GeluTanh,
            "gelu_10" => Activation::Gelu10,
            "quick_gelu" => Activation::QuickGelu,
            "silu" | "swish" => Activation::Silu,
            "relu" => Activation::Relu,
            "relu2" => Activation::Relu2,
            "relu6" => Activation::Relu6,
            "sigmoid" => Activation::Sigmoid,
            "tanh" => Activation::Tanh,
            "linear" => Activation::Linear,
            _ => return None,
        })
    }

    /// Applies the activation.
    pub fn forward(self, x: &Tensor) -> Tensor {
        match self {
            Activation::Gelu => x.gelu("none"),
            Activation::GeluTanh => x.gelu("tanh"),
            Activation::Gelu10 => x.gelu("none").clamp(-10.0, 10.0),
            Activation::QuickGelu => x * (x * 1.702).sigmoid(),
            Activation::Silu => x.silu(),
            Activation::Relu => x.relu(),
            Activation::Relu2 => x.relu().square(),
            Activation::Relu6 => x.clamp(0.0, 6.0),
            Activation::Sigmoid => x.sigmoid(),
            Activation::Tanh => x.tanh(),
            Activation::Linear => x.shallow_clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    /// Each activation against its textbook formula in float64.
    #[test]
    fn activations_match_their_formulas() {
        let x = Tensor::linspace(-12.0, 12.0, 97, (Kind::Double, tch::Device::Cpu));
        let erf_gelu: Tensor = &x * 0.5 * ((&x / 2f64.sqrt()).erf() + 1.0);
        let c = (2.0 / std::f64::consts::PI).sqrt();
        let tanh_gelu: Tensor =
            &x * 0.5 * (((&x + x.pow_tensor_scalar(3.0) * 0.044715) * c).tanh() + 1.0);
        let cases: Vec<(&str, Tensor)> = vec![
            ("gelu", erf_gelu.shallow_clone()),
            ("gelu_new", tanh_gelu.shallow_clone()),
            ("gelu_fast", tanh_gelu),
            ("gelu_10", erf_gelu.clamp(-10.0, 10.0)),
            ("quick_gelu", &x / ((&x * -1.702).exp() + 1.0)),
            ("silu", &x / ((-&x).exp() + 1.0)),
            ("relu", x.clamp_min(0.0)),
            ("relu2", x.clamp_min(0.0) * x.clamp_min(0.0)),
            ("relu6", x.clamp_min(0.0).clamp_max(6.0)),
            ("sigmoid", ((-&x).exp() + 1.0).reciprocal()),
            ("tanh", x.tanh()),
            ("linear", x.shallow_clone()),
        ];
        for (name, want) in cases {
            let got = Activation::from_name(name).unwrap().forward(&x);
            let err = (got - want).abs().max().double_value(&[]);
            assert!(err < 1e-12, "{name}: {err}");
        }
        assert!(Activation::from_name("gelu_magic").is_none());
    }
}
