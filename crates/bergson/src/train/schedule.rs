//! Learning-rate schedules: Bergson's `LRScheduleConfig.get_schedule` (transformers'
//! `get_scheduler` shapes with a warmup that starts at `lr_start`).

use crate::config::{LrScheduleConfig, LrSchedulerType};

/// A schedule over `num_steps` optimizer steps: [`LrSchedule::lr`] of the 0-based step.
#[derive(Debug, Clone)]
pub struct LrSchedule {
    cfg: LrScheduleConfig,
    warmup_steps: usize,
    decay_steps: usize,
}

impl LrSchedule {
    /// The schedule of `cfg` for `num_steps` steps. `warmup_steps` >= 1 is a step count, a
    /// value in [0, 1) a fraction of `num_steps`, rounded up.
    pub fn new(cfg: &LrScheduleConfig, num_steps: usize) -> Self {
        let warmup_steps = if cfg.warmup_steps >= 1.0 {
            cfg.warmup_steps as usize
        } else {
            (num_steps as f64 * cfg.warmup_steps).ceil() as usize
        };
        Self {
            cfg: cfg.clone(),
            warmup_steps,
            decay_steps: num_steps.saturating_sub(warmup_steps).max(1),
        }
    }

    /// The learning rate of update `step` (0-based: update `step` takes state `step` to
    /// `step + 1`).
    pub fn lr(&self, step: usize) -> f64 {
        let c = &self.cfg;
        let (lr, w) = (c.lr, self.warmup_steps);
        let warmup = || c.lr_start + (lr - c.lr_start) * (step as f64 / w.max(1) as f64);
        let progress = || (step as f64 - w as f64) / self.decay_steps as f64;
        match c.lr_scheduler_type {
            LrSchedulerType::Constant => lr,
            _ if step < w => warmup(),
            LrSchedulerType::ConstantWithWarmup => lr,
            LrSchedulerType::Linear => lr * (1.0 - progress()),
            LrSchedulerType::Cosine => {
                let omega = std::f64::consts::PI * c.num_cycles * 2.0 * progress();
                lr * 0.5 * (1.0 + omega.cos())
            }
            LrSchedulerType::CosineWithRestarts => {
                // Python's `%` on floats: the result takes the divisor's sign.
                let omega =
                    std::f64::consts::PI * 2.0 * (c.num_cycles * progress()).rem_euclid(1.0);
                lr * 0.5 * (1.0 + omega.cos())
            }
            LrSchedulerType::Polynomial => {
                c.lr_end + (lr - c.lr_end) * (1.0 - progress()).powf(c.power)
            }
        }
    }

    /// Steps of warmup.
    pub fn warmup_steps(&self) -> usize {
        self.warmup_steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from Python Bergson 2.5.1's `LRScheduleConfig(...).get_schedule(n)(step)` with
    /// int steps (tests/fixtures/scripts/make_train_refs.py prints them as well; the run's
    /// log_history.json is compared in tests/train_reference.rs).
    #[test]
    fn shapes_match_bergson() {
        let cfg = |t: LrSchedulerType, warmup: f64| LrScheduleConfig {
            lr: 1e-3,
            lr_scheduler_type: t,
            lr_start: 1e-4,
            lr_end: 1e-5,
            warmup_steps: warmup,
            num_cycles: 0.5,
            power: 2.0,
        };
        // Linear, no warmup, 3 steps: lr, 2/3 lr, 1/3 lr (log_history of a 2.5.1 run).
        let s = LrSchedule::new(&cfg(LrSchedulerType::Linear, 0.0), 3);
        let got: Vec<f64> = (0..3).map(|i| s.lr(i)).collect();
        assert_eq!(
            got,
            vec![0.001, 0.0006666666666666668, 0.0003333333333333334]
        );
        // Warmup fraction 0.25 of 10 steps: ceil(2.5) = 3 steps from lr_start.
        let s = LrSchedule::new(&cfg(LrSchedulerType::Cosine, 0.25), 10);
        assert_eq!(s.warmup_steps(), 3);
        assert_eq!(s.lr(0), 1e-4);
        assert!((s.lr(1) - (1e-4 + 9e-4 / 3.0)).abs() < 1e-18);
        assert_eq!(s.lr(3), 1e-3);
        // Half-cosine: at the midpoint of decay, lr / 2.
        let s = LrSchedule::new(&cfg(LrSchedulerType::Cosine, 0.0), 10);
        assert!((s.lr(5) - 5e-4).abs() < 1e-15);
        let s = LrSchedule::new(&cfg(LrSchedulerType::Polynomial, 0.0), 10);
        assert!((s.lr(5) - (1e-5 + (1e-3 - 1e-5) * 0.25)).abs() < 1e-15);
        let s = LrSchedule::new(&cfg(LrSchedulerType::ConstantWithWarmup, 2.0), 10);
        assert_eq!(
            (s.lr(0), s.lr(1), s.lr(2), s.lr(9)),
            (1e-4, 1e-4 + 4.5e-4, 1e-3, 1e-3)
        );
        let s = LrSchedule::new(&cfg(LrSchedulerType::Constant, 2.0), 10);
        assert_eq!(s.lr(0), 1e-3);
        let mut c = cfg(LrSchedulerType::CosineWithRestarts, 0.0);
        c.num_cycles = 2.0;
        let s = LrSchedule::new(&c, 10);
        // progress 0.5 with 2 cycles: (1.0 mod 1) = 0 → back at the peak.
        assert!((s.lr(5) - 1e-3).abs() < 1e-15);
    }
}
