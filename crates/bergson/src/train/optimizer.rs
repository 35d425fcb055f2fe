//! Functional optimizers: each update maps (parameters, gradients, state) to new parameters and
//! a new state without touching its inputs, so a traced step stays differentiable (MAGIC
//! differentiates through it). Exactly the update rules of torchopt 0.7, which Python Bergson
//! 2.5.1's trainer uses:
//!
//! - AdamW (`torchopt.adamw(schedule, betas, eps, eps_root, weight_decay)`), per parameter with
//!   step count `t` (1 after the first update):
//!   `μ ← β1 μ + (1-β1) g`, `ν ← β2 ν + (1-β2) g²`,
//!   `u = (μ / (1-β1^t)) / (sqrt(ν / (1-β2^t) + eps_root) + eps) + λ θ`, `θ ← θ - lr_{t-1} u`.
//!   `eps_root` inside the square root keeps `d sqrt / d ν` finite where `ν = 0` (embedding
//!   rows never seen), which a metagradient needs. Weight decay is decoupled and applies to
//!   every parameter (no mask), biases and norms included.
//! - SGD (`torchopt.sgd(schedule, momentum, weight_decay)`):
//!   `g' = g + λ θ`, `m ← momentum · m + g'` (`m = g'` at the first step), `θ ← θ - lr m`.
//!
//! torchopt computes the bias corrections `1 - β^t` as float32 tensors (`pow(β, count)` with an
//! int64 count); they are rounded the same way here.

use super::schedule::LrSchedule;
use crate::config::OptimizerKind;
use crate::{Error, Result};
use tch::Tensor;

/// The optimizer's hyperparameters and schedule.
#[derive(Debug, Clone)]
pub struct Optimizer {
    /// AdamW or SGD.
    pub kind: OptimizerKind,
    /// AdamW β1; SGD momentum.
    pub beta1: f64,
    /// AdamW β2.
    pub beta2: f64,
    /// AdamW epsilon outside the square root.
    pub eps: f64,
    /// AdamW epsilon inside the square root.
    pub eps_root: f64,
    /// Weight decay λ.
    pub weight_decay: f64,
    /// Learning rate per step.
    pub schedule: LrSchedule,
}

/// The optimizer's state: the moments per parameter (in the trainer's parameter order) and the
/// number of updates so far.
#[derive(Debug)]
pub enum OptState {
    /// AdamW moments.
    AdamW {
        /// First moments μ.
        mu: Vec<Tensor>,
        /// Second moments ν (`exp_avg_sq`).
        nu: Vec<Tensor>,
        /// Updates applied so far.
        count: usize,
    },
    /// SGD momentum buffers.
    Sgd {
        /// Momentum buffers.
        trace: Vec<Tensor>,
        /// Updates applied so far.
        count: usize,
    },
}

impl OptState {
    /// Updates applied so far.
    pub fn count(&self) -> usize {
        match self {
            OptState::AdamW { count, .. } | OptState::Sgd { count, .. } => *count,
        }
    }

    /// The floating-point state tensors, in order (AdamW: all μ then all ν; SGD: the buffers):
    /// the optimizer's differentiable leaves.
    pub fn tensors(&self) -> Vec<&Tensor> {
        match self {
            OptState::AdamW { mu, nu, .. } => mu.iter().chain(nu).collect(),
            OptState::Sgd { trace, .. } => trace.iter().collect(),
        }
    }

    /// Rebuilds a state of the same kind from `tensors` (as [`OptState::tensors`] orders them).
    pub fn with_tensors(&self, mut tensors: Vec<Tensor>) -> OptState {
        match self {
            OptState::AdamW { mu, count, .. } => {
                let nu = tensors.split_off(mu.len());
                OptState::AdamW {
                    mu: tensors,
                    nu,
                    count: *count,
                }
            }
            OptState::Sgd { count, .. } => OptState::Sgd {
                trace: tensors,
                count: *count,
            },
        }
    }

    /// A copy of the state without autograd history.
    pub fn detach(&self) -> OptState {
        self.with_tensors(self.tensors().iter().map(|t| t.detach()).collect())
    }
}

impl Optimizer {
    /// The zero state for `params`.
    pub fn init(&self, params: &[Tensor]) -> Result<OptState> {
        let zeros = || params.iter().map(Tensor::zeros_like).collect::<Vec<_>>();
        match self.kind {
            OptimizerKind::Adamw => Ok(OptState::AdamW {
                mu: zeros(),
                nu: zeros(),
                count: 0,
            }),
            OptimizerKind::Sgd => Ok(OptState::Sgd {
                trace: zeros(),
                count: 0,
            }),
            OptimizerKind::Muon => Err(Error::input(
                "--optimizer muon is not implemented in bergson-rs; use adamw or sgd",
            )),
        }
    }

    /// One update: the new parameters and state. Differentiable in `params`, `grads` and the
    /// state tensors when they carry autograd history; run it under `no_grad` otherwise.
    pub fn update(
        &self,
        params: &[Tensor],
        grads: &[Tensor],
        state: &OptState,
    ) -> (Vec<Tensor>, OptState) {
        let lr = self.schedule.lr(state.count());
        match state {
            OptState::AdamW { mu, nu, count } => {
                let t = (*count + 1) as f32;
                // float32, as torchopt's `1 - pow(beta, count_tensor)`.
                let bc1 = f64::from(1.0f32 - (self.beta1 as f32).powf(t));
                let bc2 = f64::from(1.0f32 - (self.beta2 as f32).powf(t));
                let mut new_params = Vec::with_capacity(params.len());
                let mut new_mu = Vec::with_capacity(params.len());
                let mut new_nu = Vec::with_capacity(params.len());
                for (((p, g), m), v) in params.iter().zip(grads).zip(mu).zip(nu) {
                    let m = m * self.beta1 + g * (1.0 - self.beta1);
                    let v = v * self.beta2 + g * g * (1.0 - self.beta2);
                    let m_hat = &m / bc1;
                    let v_hat = &v / bc2;
                    let u =
                        m_hat / ((v_hat + self.eps_root).sqrt() + self.eps) + p * self.weight_decay;
                    new_params.push(p - u * lr);
                    new_mu.push(m);
                    new_nu.push(v);
                }
                let state = OptState::AdamW {
                    mu: new_mu,
                    nu: new_nu,
                    count: count + 1,
                };
                (new_params, state)
            }
            OptState::Sgd { trace, count } => {
                let mut new_params = Vec::with_capacity(params.len());
                let mut new_trace = Vec::with_capacity(params.len());
                for ((p, g), m) in params.iter().zip(grads).zip(trace) {
                    let g = g + p * self.weight_decay;
                    let m = m * self.beta1 + g;
                    new_params.push(p - &m * lr);
                    new_trace.push(m);
                }
                let state = OptState::Sgd {
                    trace: new_trace,
                    count: count + 1,
                };
                (new_params, state)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LrScheduleConfig, LrSchedulerType};
    use tch::Kind;

    fn optimizer(kind: OptimizerKind) -> Optimizer {
        let cfg = LrScheduleConfig {
            lr_scheduler_type: LrSchedulerType::Constant,
            lr: 0.1,
            ..Default::default()
        };
        Optimizer {
            kind,
            beta1: 0.95,
            beta2: 0.975,
            eps: 1e-8,
            eps_root: 1e-17,
            weight_decay: 0.01,
            schedule: LrSchedule::new(&cfg, 10),
        }
    }

    /// Two AdamW steps on one scalar, written out by hand in float64.
    #[test]
    fn adamw_matches_the_formula() {
        let opt = optimizer(OptimizerKind::Adamw);
        let p0 = Tensor::from_slice(&[0.5f64]);
        let state = opt.init(&[p0.shallow_clone()]).unwrap();
        let (g0, g1) = (0.2f64, -0.3f64);
        let (p1, state) = opt.update(&[p0], &[Tensor::from_slice(&[g0])], &state);
        let (p2, _) = opt.update(&p1, &[Tensor::from_slice(&[g1])], &state);
        let (b1, b2, lr, wd) = (0.95f64, 0.975f64, 0.1, 0.01);
        let bc = |b: f64, t: f32| f64::from(1.0f32 - (b as f32).powf(t));
        let mut p = 0.5f64;
        let (mut m, mut v) = (0.0f64, 0.0f64);
        for (t, g) in [(1.0f32, g0), (2.0, g1)] {
            m = b1 * m + (1.0 - b1) * g;
            v = b2 * v + (1.0 - b2) * g * g;
            let u = (m / bc(b1, t)) / ((v / bc(b2, t) + 1e-17).sqrt() + 1e-8) + wd * p;
            p -= lr * u;
        }
        let got = p2[0].double_value(&[0]);
        assert!((got - p).abs() < 1e-15, "{got} vs {p}");
        assert_eq!(p2[0].kind(), Kind::Double);
    }

    #[test]
    fn sgd_matches_the_formula() {
        let opt = optimizer(OptimizerKind::Sgd);
        let p0 = Tensor::from_slice(&[0.5f64]);
        let state = opt.init(&[p0.shallow_clone()]).unwrap();
        let (p1, state) = opt.update(&[p0], &[Tensor::from_slice(&[0.2f64])], &state);
        let (p2, _) = opt.update(&p1, &[Tensor::from_slice(&[-0.3f64])], &state);
        let mut p = 0.5f64;
        let mut m = 0.0;
        for g in [0.2f64, -0.3] {
            m = 0.95 * m + g + 0.01 * p;
            p -= 0.1 * m;
        }
        assert!((p2[0].double_value(&[0]) - p).abs() < 1e-15);
    }

    #[test]
    fn muon_is_refused() {
        let e = optimizer(OptimizerKind::Muon).init(&[]).unwrap_err();
        assert!(e.to_string().contains("muon"), "{e}");
    }
}
