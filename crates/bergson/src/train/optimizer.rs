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
//! - Muon (Bergson's own functional `muon` in `magic/optim.py`, with `momentum = adam_beta1`,
//!   `adamw_betas = (adam_beta1, adam_beta2)`, `adamw_eps_root = eps_root`, and `adamw_eps`
//!   left at its default 1e-8, not `--adam_eps`): each 2-D parameter takes the Muon path
//!   ([`super::muon::direction`]: Nesterov momentum `m ← β1 m + g`, `u = 0.2 sqrt(max(r, c))
//!   NS(g + β1 m)`), every other parameter an AdamW step with float64 bias corrections; both
//!   add the decoupled `λ θ` and step `θ ← θ - lr_{t-1} u`. Bergson adds `λ θ.detach()`, which
//!   drops weight decay from its metagradient; here the term stays differentiable, so MAGIC
//!   through Muon is the exact derivative of training (docs/magic.md).
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
    /// Muon: momentum buffers of the 2-D parameters, AdamW moments of the others (each list in
    /// parameter order, skipping the parameters of the other path).
    Muon {
        /// Nesterov momentum buffers of the weight matrices.
        trace: Vec<Tensor>,
        /// AdamW first moments of the other parameters.
        mu: Vec<Tensor>,
        /// AdamW second moments of the other parameters.
        nu: Vec<Tensor>,
        /// Updates applied so far.
        count: usize,
    },
}

/// The adjoints of one optimizer update's inputs ([`Optimizer::update_vjp`]).
#[derive(Debug)]
pub struct UpdateAdjoint {
    /// ∂L/∂θ through the update's direct use of the parameters (weight decay, `θ - lr u`).
    pub params: Vec<Tensor>,
    /// ∂L/∂g, the adjoint of the gradients the update consumed.
    pub grads: Vec<Tensor>,
    /// ∂L/∂(optimizer state), as [`OptState::tensors`] orders it.
    pub opt: Vec<Tensor>,
    /// AdamW's second-moment adjoints while they are built (appended to `opt` at the end).
    opt_second: Vec<Tensor>,
}

impl UpdateAdjoint {
    fn with_capacity(n: usize) -> Self {
        UpdateAdjoint {
            params: Vec::with_capacity(n),
            grads: Vec::with_capacity(n),
            opt: Vec::with_capacity(2 * n),
            opt_second: Vec::with_capacity(n),
        }
    }
}

/// Whether Muon updates `p` with Newton-Schulz (a matrix) rather than AdamW.
fn muon_path(p: &Tensor) -> bool {
    p.dim() == 2
}

impl OptState {
    /// Updates applied so far.
    pub fn count(&self) -> usize {
        match self {
            OptState::AdamW { count, .. }
            | OptState::Sgd { count, .. }
            | OptState::Muon { count, .. } => *count,
        }
    }

    /// The same state with the update count set to `count` (a loaded checkpoint's).
    pub fn with_count(self, count: usize) -> OptState {
        match self {
            OptState::AdamW { mu, nu, .. } => OptState::AdamW { mu, nu, count },
            OptState::Sgd { trace, .. } => OptState::Sgd { trace, count },
            OptState::Muon { trace, mu, nu, .. } => OptState::Muon {
                trace,
                mu,
                nu,
                count,
            },
        }
    }

    /// Checkpoint keys of [`OptState::tensors`], for the parameters `names` (shaped as
    /// `params`): `mu.<name>` and `nu.<name>` (AdamW moments), `trace.<name>` (momentum).
    pub fn keys(&self, names: &[String], params: &[Tensor]) -> Vec<String> {
        let with = |prefix: &str, pick: &dyn Fn(&Tensor) -> bool| -> Vec<String> {
            names
                .iter()
                .zip(params)
                .filter(|(_, p)| pick(p))
                .map(|(n, _)| format!("{prefix}.{n}"))
                .collect()
        };
        let all = |_: &Tensor| true;
        let other = |p: &Tensor| !muon_path(p);
        match self {
            OptState::AdamW { .. } => [with("mu", &all), with("nu", &all)].concat(),
            OptState::Sgd { .. } => with("trace", &all),
            OptState::Muon { .. } => [
                with("trace", &muon_path),
                with("mu", &other),
                with("nu", &other),
            ]
            .concat(),
        }
    }

    /// The floating-point state tensors, in order (AdamW: all μ then all ν; SGD: the buffers;
    /// Muon: the buffers, then μ, then ν): the optimizer's differentiable leaves.
    pub fn tensors(&self) -> Vec<&Tensor> {
        match self {
            OptState::AdamW { mu, nu, .. } => mu.iter().chain(nu).collect(),
            OptState::Sgd { trace, .. } => trace.iter().collect(),
            OptState::Muon { trace, mu, nu, .. } => trace.iter().chain(mu).chain(nu).collect(),
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
            OptState::Muon {
                trace, mu, count, ..
            } => {
                let mut mu_nu = tensors.split_off(trace.len());
                let nu = mu_nu.split_off(mu.len());
                OptState::Muon {
                    trace: tensors,
                    mu: mu_nu,
                    nu,
                    count: *count,
                }
            }
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
            OptimizerKind::Muon => {
                if let Some(p) = params.iter().find(|p| p.dim() > 2) {
                    return Err(Error::input(format!(
                        "--optimizer muon does not support parameters with more than 2 dimensions (this model has one of shape {:?}); use --optimizer adamw",
                        p.size()
                    )));
                }
                if !params.iter().any(muon_path) {
                    return Err(Error::input(
                        "--optimizer muon needs 2-D weight matrices and this model has none; use --optimizer adamw",
                    ));
                }
                let pick = |matrix: bool| {
                    (params.iter())
                        .filter(|p| muon_path(p) == matrix)
                        .map(Tensor::zeros_like)
                        .collect::<Vec<_>>()
                };
                Ok(OptState::Muon {
                    trace: pick(true),
                    mu: pick(false),
                    nu: pick(false),
                    count: 0,
                })
            }
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
            OptState::Muon {
                trace,
                mu,
                nu,
                count,
            } => self.muon_update(params, grads, (trace, mu, nu), *count, lr),
        }
    }

    /// The vector-Jacobian product of [`Optimizer::update`] in closed form: given the
    /// adjoints of the new parameters (`adj_params`) and of the new state (`adj_opt`, as
    /// [`OptState::tensors`] orders it), the adjoints of the update's inputs. `None` for Muon,
    /// whose Newton-Schulz iteration is differentiated by autograd instead.
    ///
    /// MAGIC's backward takes this product once per step and column; written out, it is a
    /// dozen elementwise passes instead of autograd's graph of the update (several times as
    /// many, each with its own temporaries). Runs without autograd.
    pub fn update_vjp(
        &self,
        params: &[Tensor],
        grads: &[Tensor],
        state: &OptState,
        adj_params: &[Tensor],
        adj_opt: &[Tensor],
    ) -> Option<UpdateAdjoint> {
        let _guard = tch::no_grad_guard();
        let lr = self.schedule.lr(state.count());
        let n = params.len();
        match state {
            OptState::AdamW { mu, nu, count } => {
                let t = (*count + 1) as f32;
                let bc1 = f64::from(1.0f32 - (self.beta1 as f32).powf(t));
                let bc2 = f64::from(1.0f32 - (self.beta2 as f32).powf(t));
                let mut out = UpdateAdjoint::with_capacity(n);
                for (i, (((p_bar, g), m), v)) in
                    adj_params.iter().zip(grads).zip(mu).zip(nu).enumerate()
                {
                    // Forward, as `update`: m' = β1 m + (1-β1) g, v' = β2 v + (1-β2) g²,
                    // d = sqrt(v'/bc2 + eps_root) + eps, θ' = θ - lr (m'/bc1 / d + λ θ).
                    let m2 = m * self.beta1 + g * (1.0 - self.beta1);
                    let v2 = v * self.beta2 + g * g * (1.0 - self.beta2);
                    let root = (&v2 / bc2 + self.eps_root).sqrt();
                    let d = &root + self.eps;
                    // Backward: ū = -lr θ̄', then through m'/bc1 / d and the square root.
                    let u_bar = p_bar * -lr;
                    let m_hat_bar = &u_bar / &d;
                    let d_bar = -(&m_hat_bar * (m2 / bc1)) / &d;
                    let m2_bar = &adj_opt[i] + m_hat_bar / bc1;
                    let v2_bar = &adj_opt[n + i] + d_bar / (root * (2.0 * bc2));
                    out.params.push(p_bar + u_bar * self.weight_decay);
                    out.grads.push(
                        &m2_bar * (1.0 - self.beta1) + g * &v2_bar * (2.0 * (1.0 - self.beta2)),
                    );
                    out.opt.push(m2_bar * self.beta1);
                    out.opt_second.push(v2_bar * self.beta2);
                }
                let second = std::mem::take(&mut out.opt_second);
                out.opt.extend(second);
                Some(out)
            }
            OptState::Sgd { .. } => {
                let mut out = UpdateAdjoint::with_capacity(n);
                for (p_bar, m_bar) in adj_params.iter().zip(adj_opt) {
                    // θ' = θ - lr m', m' = β m + g + λ θ.
                    let m2_bar = m_bar - p_bar * lr;
                    out.params.push(p_bar + &m2_bar * self.weight_decay);
                    out.opt.push(&m2_bar * self.beta1);
                    out.grads.push(m2_bar);
                }
                Some(out)
            }
            OptState::Muon { .. } => None,
        }
    }

    /// Muon's update (see the module docs): the matrices through Newton-Schulz, the rest
    /// through AdamW with float64 bias corrections (`1 - β ** step.item()` in Bergson) and
    /// `eps = 1e-8`.
    fn muon_update(
        &self,
        params: &[Tensor],
        grads: &[Tensor],
        (trace, mu, nu): (&[Tensor], &[Tensor], &[Tensor]),
        count: usize,
        lr: f64,
    ) -> (Vec<Tensor>, OptState) {
        const ADAMW_EPS: f64 = 1e-8;
        let t = (count + 1) as f64;
        let bc1 = 1.0 - self.beta1.powf(t);
        let bc2 = 1.0 - self.beta2.powf(t);
        let (mut traces, mut moments) = (trace.iter(), mu.iter().zip(nu));
        let mut new_params = Vec::with_capacity(params.len());
        let (mut new_trace, mut new_mu, mut new_nu) = (Vec::new(), Vec::new(), Vec::new());
        for (p, g) in params.iter().zip(grads) {
            let u = if muon_path(p) {
                let m = traces.next().expect("a momentum buffer per matrix");
                let (u, m) = super::muon::direction(g, m, self.beta1);
                new_trace.push(m);
                u
            } else {
                let (m, v) = moments.next().expect("AdamW moments per vector");
                let m = m * self.beta1 + g * (1.0 - self.beta1);
                let v = v * self.beta2 + g * g * (1.0 - self.beta2);
                let u = (&m / bc1) / ((&v / bc2 + self.eps_root).sqrt() + ADAMW_EPS);
                new_mu.push(m);
                new_nu.push(v);
                u
            };
            new_params.push(p - (u + p * self.weight_decay) * lr);
        }
        let state = OptState::Muon {
            trace: new_trace,
            mu: new_mu,
            nu: new_nu,
            count: count + 1,
        };
        (new_params, state)
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

    /// The closed-form VJP of an update equals autograd's through the update itself
    /// (AdamW at two step counts, SGD), in float64 with random adjoints and states.
    #[test]
    fn update_vjp_matches_autograd() {
        tch::manual_seed(3);
        let opts = (Kind::Double, tch::Device::Cpu);
        for (kind, count) in [
            (OptimizerKind::Adamw, 0),
            (OptimizerKind::Adamw, 4),
            (OptimizerKind::Sgd, 2),
        ] {
            let opt = optimizer(kind);
            let shapes: [&[i64]; 2] = [&[3, 4], &[5]];
            let params: Vec<Tensor> = shapes.iter().map(|s| Tensor::randn(*s, opts)).collect();
            let grads: Vec<Tensor> = shapes.iter().map(|s| Tensor::randn(*s, opts)).collect();
            let state = opt.init(&params).unwrap();
            let moments = (state.tensors().iter())
                .map(|t| t.randn_like().abs() * 0.1)
                .collect();
            let state = state.with_tensors(moments).with_count(count);
            let leaf = |t: &Tensor| t.detach().set_requires_grad(true);
            let (p, g) = (
                params.iter().map(leaf).collect::<Vec<_>>(),
                grads.iter().map(leaf).collect::<Vec<_>>(),
            );
            let s = state.with_tensors(state.tensors().into_iter().map(leaf).collect());
            let (new_p, new_s) = opt.update(&p, &g, &s);
            let outputs: Vec<&Tensor> = new_p.iter().chain(new_s.tensors()).collect();
            let adjoints: Vec<Tensor> = outputs.iter().map(|o| o.randn_like()).collect();
            let roots: Vec<Tensor> = outputs.iter().zip(&adjoints).map(|(o, a)| *o * a).collect();
            let inputs: Vec<&Tensor> = p.iter().chain(&g).chain(s.tensors()).collect();
            let want = Tensor::run_backward(&roots, &inputs, false, false);
            let n = params.len();
            let got = opt
                .update_vjp(&params, &grads, &state, &adjoints[..n], &adjoints[n..])
                .unwrap();
            let got: Vec<&Tensor> = got
                .params
                .iter()
                .chain(&got.grads)
                .chain(&got.opt)
                .collect();
            assert_eq!(got.len(), want.len(), "{kind:?}");
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                let err = (*a - b).abs().max().double_value(&[]);
                let scale = b.abs().max().double_value(&[]).max(1e-300);
                assert!(
                    err / scale < 1e-12,
                    "{kind:?} count {count}: input {i} off by {err:e}"
                );
            }
        }
        let muon = optimizer(OptimizerKind::Muon);
        let w = [Tensor::randn([3, 2], opts)];
        let state = muon.init(&w).unwrap();
        assert!(muon.update_vjp(&w, &w, &state, &w, &[]).is_none());
    }

    #[test]
    fn muon_refuses_models_it_cannot_train() {
        let opt = optimizer(OptimizerKind::Muon);
        let vectors = [Tensor::zeros([3], (Kind::Float, tch::Device::Cpu))];
        let e = opt.init(&vectors).unwrap_err().to_string();
        assert!(e.contains("2-D") && e.contains("--optimizer adamw"), "{e}");
        let cube = [Tensor::zeros([2, 2, 2], (Kind::Float, tch::Device::Cpu))];
        let e = opt.init(&cube).unwrap_err().to_string();
        assert!(e.contains("more than 2 dimensions"), "{e}");
    }

    /// Two Muon steps on a 3×2 matrix and a bias, written out in float64: Nesterov momentum
    /// through Newton-Schulz (checked on its own in `muon`) for the matrix, AdamW with float64
    /// bias corrections and eps 1e-8 (not the configured 1e-9) for the bias.
    #[test]
    fn muon_matches_the_formula() {
        let mut opt = optimizer(OptimizerKind::Muon);
        opt.eps = 1e-9;
        let w0 = Tensor::from_slice(&[0.5f64, -0.2, 0.1, 0.3, -0.4, 0.8]).reshape([3, 2]);
        let b0 = Tensor::from_slice(&[0.5f64]);
        let gw = [
            Tensor::from_slice(&[0.2f64, -0.1, 0.4, 0.3, -0.5, 0.05]).reshape([3, 2]),
            Tensor::from_slice(&[-0.3f64, 0.2, 0.1, -0.1, 0.6, 0.2]).reshape([3, 2]),
        ];
        let gb = [0.2f64, -0.3];
        let mut state = opt.init(&[w0.shallow_clone(), b0.shallow_clone()]).unwrap();
        let mut params = vec![w0.shallow_clone(), b0];
        for i in 0..2 {
            let grads = [gw[i].shallow_clone(), Tensor::from_slice(&[gb[i]])];
            (params, state) = opt.update(&params, &grads, &state);
        }
        let (beta1, beta2, lr, wd) = (0.95f64, 0.975f64, 0.1, 0.01);
        let (mut w, mut m) = (w0.copy(), w0.zeros_like());
        let (mut b, mut mb, mut vb) = (0.5f64, 0.0f64, 0.0f64);
        for (i, g) in gw.iter().enumerate() {
            m = &m * beta1 + g;
            let u = super::super::muon::orthogonalize(&(g + &m * beta1)) * (0.2 * 3f64.sqrt());
            w = &w - (u + &w * wd) * lr;
            let t = (i + 1) as f64;
            mb = beta1 * mb + (1.0 - beta1) * gb[i];
            vb = beta2 * vb + (1.0 - beta2) * gb[i] * gb[i];
            let u =
                (mb / (1.0 - beta1.powf(t))) / ((vb / (1.0 - beta2.powf(t)) + 1e-17).sqrt() + 1e-8);
            b -= lr * (u + wd * b);
        }
        let off = (&params[0] - &w).abs().max().double_value(&[]);
        assert!(off < 1e-15, "matrix off by {off:e}");
        assert!((params[1].double_value(&[0]) - b).abs() < 1e-15);
        let OptState::Muon {
            trace,
            mu,
            nu,
            count,
        } = &state
        else {
            panic!("not a Muon state")
        };
        assert_eq!((trace.len(), mu.len(), nu.len(), *count), (1, 1, 1, 2));
        assert!((&trace[0] - &m).abs().max().double_value(&[]) < 1e-15);
    }
}
