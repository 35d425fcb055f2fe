//! LiSSA's batch draws replay torch's global generator. In a test binary of its own: the unit
//! tests run in parallel threads of one process, and any of them drawing from the global
//! generator between the seed and the draw would change the sequence.

use bergson::hessians::lissa::BatchDraw;

/// Python: `g = torch.Generator().manual_seed(3)`, then `torch.randperm(10, generator=g)`
/// twice gives `[6, 0, 3, 7, ...]` and `[9, 8, 5, 3, ...]` (torch 2.11).
#[test]
fn batches_replay_torchs_generator() {
    let mut d = BatchDraw::seeded(0, 3, 10, 4);
    assert_eq!(d.next_batch().unwrap(), [6, 0, 3, 7]);
    assert_eq!(d.next_batch().unwrap(), [9, 8, 5, 3]);
}
