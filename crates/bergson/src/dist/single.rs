//! [`SingleProcess`]: the job of one, so every code path written against [`Collective`] runs
//! without a cluster.

use tch::Tensor;

use super::{Collective, DistError, ReduceOp};

/// A job of one process: every collective returns its input.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }

    fn world_size(&self) -> usize {
        1
    }

    fn all_reduce(&self, _t: &mut Tensor, _op: ReduceOp) -> Result<(), DistError> {
        Ok(())
    }

    fn broadcast(&self, _t: &mut Tensor, root: usize) -> Result<(), DistError> {
        if root != 0 {
            return Err(DistError::BadTensor(format!(
                "broadcast from rank {root} in a job of 1"
            )));
        }
        Ok(())
    }

    fn all_gather(&self, t: &Tensor) -> Result<Vec<Tensor>, DistError> {
        Ok(vec![t.copy()])
    }

    fn barrier(&self) -> Result<(), DistError> {
        Ok(())
    }
}
