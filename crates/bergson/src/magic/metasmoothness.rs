//! `bergson metasmoothness`: the empirical metasmoothness of a training setup (MAGIC, Ilyas &
//! Engstrom, arXiv:2503.13751, Definition 2), as Python Bergson 2.5.1's
//! `magic/metasmoothness.py` measures it.
//!
//! Three trainings with data weights `w_k = 1 + k·h·v` (`k = 0, 1, 2`, `h = --fd_step`,
//! `v ~ N(0, I)` over the training documents drawn from `--direction_seed`, zero on the
//! padding's document) end at parameters `θ0`, `θh`, `θ2h`. The score is the movement-weighted
//! sign agreement of the two consecutive finite differences:
//!
//! `score = Σ_i (d_i / Σ_j d_j) · sign(θh − θ0)_i · sign(θ2h − θh)_i`,  `d = |θ2h − θ0|`
//!
//! (1 when nothing moved). Near 1, the final parameters respond linearly to the data weights
//! along `v`, so metagradients predict retraining well; near 0 or negative, they do not. It
//! costs three trainings and no retraining bank, which makes it a cheap objective for tuning
//! the knobs of a MAGIC run (`--eps_root`, `--adam_eps`, `--lr`, `--batch_size`).
//!
//! ```text
//! <run_path>/config.yaml               the run config (steps: [{metasmoothness: ...}])
//! <run_path>/metasmoothness.json       score, fd_step, direction_seed, total_movement_l1
//! <run_path>/model/                    the unperturbed (k = 0) model (--save_models)
//! ```

use crate::config::MetasmoothnessConfig;
use crate::error::IoContext;
use crate::train::run::{save_hf_model, write_run_config};
use crate::train::{prepare_training, WeightChoice};
use crate::{Error, Result};
use serde::Serialize;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

/// `metasmoothness.json`, in Bergson's key order.
#[derive(Debug, Clone, Serialize)]
pub struct MetasmoothnessResult {
    /// The movement-weighted sign agreement, in [-1, 1].
    pub score: f64,
    /// The finite-difference step h.
    pub fd_step: f64,
    /// The seed of the direction v.
    pub direction_seed: u64,
    /// `Σ |θ2h − θ0|` over every trained parameter entry.
    pub total_movement_l1: f64,
}

/// What a metasmoothness run produced.
#[derive(Debug)]
pub struct MetasmoothnessSummary {
    /// The run directory.
    pub run_path: PathBuf,
    /// What `metasmoothness.json` holds.
    pub result: MetasmoothnessResult,
    /// Steps of each training.
    pub num_steps: usize,
}

/// The perturbation direction: `torch.randn(n, generator=torch.Generator().manual_seed(seed))`,
/// float32, drawn from libtorch's CPU generator (the same Mersenne Twister and normal
/// sampler as PyTorch's, so the same numbers). It reseeds libtorch's global CPU generator
/// (tch exposes no separate generator); nothing else in a run draws from it.
pub fn direction(seed: u64, n: i64) -> Tensor {
    tch::manual_seed(seed as i64);
    Tensor::randn([n], (Kind::Float, Device::Cpu))
}

/// The score of Definition 2 from the flattened final parameters of the three trainings
/// (float32, as Bergson computes it).
pub fn metasmoothness_score(theta0: &Tensor, theta_h: &Tensor, theta_2h: &Tensor) -> f64 {
    let d = (theta_2h - theta0).abs();
    let total = d.sum(Kind::Float);
    if total.double_value(&[]) == 0.0 {
        return 1.0;
    }
    let s1 = (theta_h - theta0).sign();
    let s2 = (theta_2h - theta_h).sign();
    (d / total * s1 * s2).sum(Kind::Float).double_value(&[])
}

/// Runs `bergson metasmoothness` with config `c` on `device`.
pub fn metasmoothness(c: &MetasmoothnessConfig, device: Device) -> Result<MetasmoothnessSummary> {
    crate::train::run::check_run_path(&c.train, "metasmoothness")?;
    if !c.fd_step.is_finite() {
        return Err(Error::input(format!(
            "--fd_step {} must be a finite number",
            c.fd_step
        )));
    }
    let mut run = prepare_training(&c.train, device, WeightChoice::PerDocument, |dir| {
        write_run_config(dir, "metasmoothness", c)
    })?;
    let n = run.stream.weights.size()[0];
    let padded = run.stream.padding.num_rows > 0;
    // The same v for every training; the padding's document is never perturbed.
    let v = direction(c.direction_seed, n);
    if padded {
        let _ = v.narrow(0, n - 1, 1).fill_(0.0);
    }
    let mut thetas = Vec::with_capacity(3);
    for k in 0..3u32 {
        crate::interrupt::check()?;
        let weights = &v * (c.fd_step * f64::from(k)) + 1.0;
        if padded {
            let _ = weights.narrow(0, n - 1, 1).fill_(0.0);
        }
        run.stream.set_weights(weights.to_device(device))?;
        const NAMES: [&str; 3] = ["Training 1/3", "Training 2/3", "Training 3/3"];
        let mut phase =
            crate::progress::Phase::new(NAMES[k as usize], "steps", Some(run.num_steps() as u64));
        let state = run.trainer.train(
            run.initial.detach(),
            &run.stream,
            |_| Ok(()),
            |_, _| {
                phase.inc(1);
                Ok(())
            },
        )?;
        drop(phase);
        tracing::info!("finished training {}/3 (w = 1 + {k}*h*v)", k + 1);
        let flat: Vec<Tensor> = (state.params.iter())
            .map(|p| {
                p.detach()
                    .to_kind(Kind::Float)
                    .to_device(Device::Cpu)
                    .flatten(0, -1)
            })
            .collect();
        thetas.push(Tensor::cat(&flat, 0));
        if k == 0 && c.train.save_models {
            save_hf_model(
                &run.model_dir,
                &run.run.join("model"),
                &run.names,
                &state.params,
            )?;
        }
    }
    let score = metasmoothness_score(&thetas[0], &thetas[1], &thetas[2]);
    let movement = (&thetas[2] - &thetas[0])
        .abs()
        .sum(Kind::Float)
        .double_value(&[]);
    let result = MetasmoothnessResult {
        score,
        fd_step: c.fd_step,
        direction_seed: c.direction_seed,
        total_movement_l1: movement,
    };
    tracing::info!("metasmoothness score = {score:.4} (h={})", c.fd_step);
    let path = run.run.join("metasmoothness.json");
    let json = serde_json::to_string_pretty(&result)
        .map_err(|e| Error::internal(format!("cannot write metasmoothness.json: {e}")))?;
    std::fs::write(&path, json).at_path(&path)?;
    Ok(MetasmoothnessSummary {
        run_path: run.run.clone(),
        result,
        num_steps: run.num_steps(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Definition 2 on hand-made parameter vectors, against a direct loop in float64.
    #[test]
    fn score_is_the_movement_weighted_sign_agreement() {
        let t0 = [0.0f32, 1.0, -2.0, 0.5, 3.0];
        let th = [0.1f32, 0.8, -2.0, 0.7, 3.0];
        let t2 = [0.3f32, 0.9, -2.5, 0.6, 3.0];
        let (mut num, mut den) = (0.0f64, 0.0f64);
        for i in 0..5 {
            let d = f64::from((t2[i] - t0[i]).abs());
            let s1 = f64::from((th[i] - t0[i]).signum()) * f64::from(th[i] != t0[i]);
            let s2 = f64::from((t2[i] - th[i]).signum()) * f64::from(t2[i] != th[i]);
            num += d * s1 * s2;
            den += d;
        }
        let got = metasmoothness_score(
            &Tensor::from_slice(&t0),
            &Tensor::from_slice(&th),
            &Tensor::from_slice(&t2),
        );
        assert!((got - num / den).abs() < 1e-6, "{got} vs {}", num / den);
        // Nothing moved: metasmooth by definition.
        let same = Tensor::from_slice(&t0);
        assert_eq!(metasmoothness_score(&same, &same, &same), 1.0);
    }
}
