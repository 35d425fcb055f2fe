//! The choice-valued settings, spelled as Bergson spells them on the command line and in YAML.

use serde::{Deserialize, Serialize};

macro_rules! choice {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? } default $default:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
        pub enum $name {
            $(
                $(#[$vdoc])*
                #[serde(rename = $text)]
                #[value(name = $text)]
                $variant,
            )+
        }

        impl $name {
            /// The spelling Bergson uses.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)+ }
            }
        }

        impl Default for $name {
            fn default() -> Self { $name::$default }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

choice! {
    /// Distribution of projection matrix entries (`--projection_type`).
    ProjectionType {
        /// Standard normal entries (Box-Muller on Philox output).
        Normal = "normal",
        /// ±1 entries (Bergson's default).
        Rademacher = "rademacher",
    } default Rademacher
}

choice! {
    /// Scaling of projection matrix entries (`--projection_scale`).
    ProjectionScale {
        /// Divide by sqrt(projection_dim): variance 1/p (Johnson-Lindenstrauss).
        Jl = "jl",
        /// Divide each row by its L2 norm.
        RowNorm = "row_norm",
    } default Jl
}

choice! {
    /// What is projected (`--projection_target`).
    ProjectionTarget {
        /// Two-sided projection of each module's gradient to `[p, p]`.
        PerModule = "per_module",
        /// One right projection per module, summed into a single `[p]` vector.
        Global = "global",
    } default PerModule
}

choice! {
    /// Per-token loss (`--loss_fn`).
    LossFn {
        /// Cross-entropy.
        Ce = "ce",
        /// KL divergence to the model with adapters disabled (needs a PEFT adapter).
        Kl = "kl",
        /// Negative log-odds of the label (TRAK's model output function).
        LogOdds = "log_odds",
    } default Ce
}

choice! {
    /// How a document's token losses are combined (`--loss_reduction`).
    LossReduction {
        /// Divide the sum by the number of labelled tokens.
        Mean = "mean",
        /// Sum over labelled tokens (Bergson's default).
        Sum = "sum",
    } default Sum
}

choice! {
    /// Aggregation of all rows into one (`--aggregation`).
    Aggregation {
        /// Mean of the rows (divided by the number of documents).
        Mean = "mean",
        /// Sum of the rows.
        Sum = "sum",
        /// One row per document (or token).
        None = "none",
    } default None
}

choice! {
    /// Eigenvalue function used to invert a Hessian (`--inversion`).
    Inversion {
        /// `1 / (λ + c·mean(λ))`.
        DampedInverse = "damped_inverse",
        /// `1 / (λ + c)`.
        AbsoluteDampedInverse = "absolute_damped_inverse",
        /// Damping split across Kronecker factors.
        FactoredTikhonov = "factored_tikhonov",
        /// `1/λ` where `λ > c·mean(λ)`, else 0.
        Pseudoinverse = "pseudoinverse",
        /// `λ / (λ² + α²)`, `α = c·mean(λ)`.
        TikhonovFiltered = "tikhonov_filtered",
    } default DampedInverse
}

choice! {
    /// Model dtype (`--precision`), with all of Bergson's spellings.
    PrecisionChoice {
        /// The checkpoint's own dtype (config.json `dtype`/`torch_dtype`).
        Auto = "auto",
        /// bfloat16.
        Bf16 = "bf16",
        /// float16.
        Fp16 = "fp16",
        /// float32.
        Fp32 = "fp32",
        /// float64.
        Fp64 = "fp64",
        /// 4-bit bitsandbytes quantisation (not supported by bergson-rs).
        Int4 = "int4",
        /// 8-bit bitsandbytes quantisation (not supported by bergson-rs).
        Int8 = "int8",
    } default Fp32
}

choice! {
    /// How `bergson hessian` approximates the Hessian (`--method`).
    HessianMethod {
        /// Kronecker-factored curvature: input and output-gradient covariances per module.
        Kfac = "kfac",
        /// Trace-scaled K-FAC: each factor weighted by the other's trace, batch by batch.
        Tkfac = "tkfac",
        /// Shampoo: Gram matrices of each batch's summed weight gradient.
        Shampoo = "shampoo",
        /// Dense Gram of the (projected) per-example gradients (TrackStar, TRAK).
        Autocorrelation = "autocorrelation",
    } default Kfac
}

choice! {
    /// Dtype the Hessian factors accumulate and are stored in (`--hessian_dtype`).
    HessianDtype {
        /// bfloat16.
        Bf16 = "bf16",
        /// float16.
        Fp16 = "fp16",
        /// float32 (Bergson's default).
        Fp32 = "fp32",
        /// float64.
        Fp64 = "fp64",
    } default Fp32
}

impl HessianDtype {
    /// The libtorch kind.
    pub fn kind(self) -> tch::Kind {
        match self {
            HessianDtype::Bf16 => tch::Kind::BFloat16,
            HessianDtype::Fp16 => tch::Kind::Half,
            HessianDtype::Fp32 => tch::Kind::Float,
            HessianDtype::Fp64 => tch::Kind::Double,
        }
    }
}
