//! bergson's fused CPU causal attention (`bergson::models::attention_kernel`) side by side with
//! libtorch's `scaled_dot_product_attention` (its CPU flash kernel) in one run, forward alone
//! and forward + backward, at several sequence lengths with the token count per batch fixed
//! (`N * S = --tokens`, as `--token_batch_size` packs documents), so the work per token grows
//! linearly with S.
//!
//! ```sh
//! cargo bench -p bergson-cli --bench attention
//! cargo bench -p bergson-cli --bench attention -- --tokens 4096 --heads 8 --head-dim 64 --reps 5
//! ```

use std::time::Instant;

use bergson::models::attention_kernel::{causal_attention_fused, fused_attention_available};
use tch::{Device, Kind, Tensor};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: i64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map_or(default, |v| v.parse().expect("a whole number"))
    };
    let tokens = arg("--tokens", 2048);
    let heads = arg("--heads", 4);
    let kv_heads = arg("--kv-heads", heads);
    let d = arg("--head-dim", 32);
    let reps = arg("--reps", 10) as usize;
    if !fused_attention_available() {
        println!("the fused kernel does not run here (no AVX2/FMA, or BERGSON_FUSED_ATTENTION=0)");
        return;
    }
    println!(
        "threads: {}, tokens per batch: {tokens}, heads: {heads} (kv {kv_heads}), head dim: {d}, \
         median of {reps}",
        tch::get_num_threads()
    );
    println!(
        "{:>5} {:>3} | {:>9} {:>9} {:>6} | {:>9} {:>9} {:>6} | {:>8} {:>8}",
        "S",
        "N",
        "fwd torch",
        "fwd ours",
        "ratio",
        "f+b torch",
        "f+b ours",
        "ratio",
        "GF/s",
        "max err"
    );
    let mut s = 64;
    while s <= tokens {
        let n = tokens / s;
        let make = |h: i64| {
            Tensor::randn([n, s, h, d], (Kind::Float, Device::Cpu))
                .transpose(1, 2)
                .set_requires_grad(true)
        };
        let (q, k, v) = (make(heads), make(kv_heads), make(kv_heads));
        let g = Tensor::randn([n, heads, s, d], (Kind::Float, Device::Cpu));
        let scale = 1.0 / (d as f64).sqrt();
        let torch = || {
            Tensor::scaled_dot_product_attention(
                &q,
                &k,
                &v,
                None::<&Tensor>,
                0.0,
                true,
                scale,
                kv_heads != heads,
            )
        };
        let ours = || causal_attention_fused(&q, &k, &v, scale).expect("kernel applies");
        let err = (ours() - torch()).abs().max().double_value(&[]);
        let fwd = |f: &dyn Fn() -> Tensor| {
            median(reps, || {
                let _guard = tch::no_grad_guard();
                drop(f());
            })
        };
        let both = |f: &dyn Fn() -> Tensor| {
            median(reps, || {
                let out = f();
                Tensor::run_backward(&[(&out * &g).sum(Kind::Float)], &[&q, &k, &v], false, false);
            })
        };
        let (ft, fo) = (fwd(&torch), fwd(&ours));
        let (bt, bo) = (both(&torch), both(&ours));
        // Causal: half the S x S scores; 2 GEMMs forward, 5 more backward (P recomputed).
        let flops = 7.0 * (n * heads * s * s * d) as f64;
        println!(
            "{s:>5} {n:>3} | {:>7.2}ms {:>7.2}ms {:>5.2}x | {:>7.2}ms {:>7.2}ms {:>5.2}x | {:>8.1} {err:>8.1e}",
            ft * 1e3,
            fo * 1e3,
            ft / fo,
            bt * 1e3,
            bo * 1e3,
            bt / bo,
            flops / bo / 1e9,
        );
        s *= 2;
    }
}

/// Median wall time of `reps` runs of `f`, after one warm-up run.
fn median(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}
