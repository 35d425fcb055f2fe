//! The benchmark workload, generated without Python: a random GPT-NeoX shaped like pythia-14m
//! (6 layers, hidden 128, 4 heads, intermediate 512, vocab 50304) or a Llama of similar size
//! (6 layers, hidden 128, 4/2 heads, intermediate 352, vocab 32000), or a Gemma-2 of the
//! Llama's shape with GPT-NeoX's vocabulary and both soft-caps, Hugging Face checkpoint
//! files with transformers' names and init (N(0, 0.02), unit norms), the fixture BPE tokenizer,
//! and generated English-like text with log-normal lengths. Deterministic for a seed.

use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

/// Which model to generate.
#[derive(Clone, Copy)]
pub enum Arch {
    NeoX,
    Llama,
    Gemma2,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::NeoX => "neox",
            Arch::Llama => "llama",
            Arch::Gemma2 => "gemma2",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Arch::NeoX => "GPT-NeoX 6x128, vocab 50304 (pythia-14m shape)",
            Arch::Llama => "Llama 6x128, 4/2 heads, vocab 32000",
            Arch::Gemma2 => {
                "Gemma-2 6x128, 4/2 heads, vocab 50304, scores capped at 50, logits at 30"
            }
        }
    }
}

pub struct Workload {
    pub model: PathBuf,
    pub data: PathBuf,
    pub docs: usize,
    pub tokens: usize,
}

const WORDS: &str = "the of and to in is was for on that with as by it at from his an were are which this be or has had not first one their its new after who they have her she two been other when there all during into school time may years more most only over city some world would where later up such used many can state about national out known university united then made capital river village century people house game season team music film war";

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_mul(0xD1B5_4A32_D192_ED03))
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Workload {
    pub fn generate(dir: &Path, arch: Arch, docs: usize, seed: u64) -> Workload {
        let model = dir.join("model");
        std::fs::create_dir_all(&model).expect("workload dir");
        tch::manual_seed(seed as i64);
        match arch {
            Arch::NeoX => neox(&model),
            Arch::Llama => llama(&model),
            Arch::Gemma2 => gemma2(&model),
        }
        let fixtures =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tokenizers/bpe");
        for f in ["tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(fixtures.join(f), model.join(f)).expect("tokenizer");
        }
        let words: Vec<&str> = WORDS.split(' ').collect();
        let mut rng = Rng::new(seed);
        let mut text = String::new();
        for _ in 0..docs {
            // Log-normal word counts (median ~90), clipped to 4..400.
            let (u1, u2) = (rng.unit().max(1e-12), rng.unit());
            let normal = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            let n = ((4.5 + 0.6 * normal).exp() as usize).clamp(4, 400);
            let doc: Vec<&str> = (0..n)
                .map(|_| words[(rng.next() % words.len() as u64) as usize])
                .collect();
            text.push_str(&serde_json::json!({ "text": doc.join(" ") }).to_string());
            text.push('\n');
        }
        let data = dir.join("data.jsonl");
        std::fs::write(&data, text).expect("data");
        let tok = bergson::data::tokenize::Tokenizer::from_dir(&model).expect("tokenizer");
        let rows = tok
            .encoder(None)
            .unwrap()
            .encode_texts(
                &std::fs::read_to_string(&data)
                    .unwrap()
                    .lines()
                    .map(|l| {
                        serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                            .as_str()
                            .unwrap()
                            .to_string()
                    })
                    .collect::<Vec<_>>(),
            )
            .unwrap();
        let tokens = rows.iter().map(|r| r.len()).sum();
        Workload {
            model,
            data,
            docs,
            tokens,
        }
    }
}

/// The scaling corpus: short English-like documents with log-normal word counts (median ~12,
/// clipped to 2..64), endless. One family for every size: the corpus of n documents is the
/// first n of any larger one.
pub struct ShortDocuments {
    rng: Rng,
    words: Vec<&'static str>,
}

impl ShortDocuments {
    pub fn new(seed: u64) -> ShortDocuments {
        ShortDocuments {
            rng: Rng::new(seed),
            words: WORDS.split(' ').collect(),
        }
    }
}

impl Iterator for ShortDocuments {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        let rng = &mut self.rng;
        let (u1, u2) = (rng.unit().max(1e-12), rng.unit());
        let normal = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        let n = ((2.5 + 0.6 * normal).exp() as usize).clamp(2, 64);
        let doc: Vec<&str> = (0..n)
            .map(|_| self.words[(rng.next() % self.words.len() as u64) as usize])
            .collect();
        Some(doc.join(" "))
    }
}

impl Workload {
    /// The same model with only the first document (written to `path`): a build of it times a
    /// tool's start-up (runtime, model and data loading, one batch, writing the index). Its
    /// `tokens` are not counted (0).
    pub fn first_document(&self, path: &Path) -> Workload {
        let text = std::fs::read_to_string(&self.data).expect("workload data");
        let first = text.lines().next().expect("a document");
        std::fs::write(path, format!("{first}\n")).expect("one-document data");
        Workload {
            model: self.model.clone(),
            data: path.to_path_buf(),
            docs: 1,
            tokens: 0,
        }
    }
}

fn normal(shape: &[i64]) -> Tensor {
    Tensor::randn(shape, (Kind::Float, tch::Device::Cpu)) * 0.02
}

fn ones(n: i64) -> Tensor {
    Tensor::ones([n], (Kind::Float, tch::Device::Cpu))
}

fn zeros(n: i64) -> Tensor {
    Tensor::zeros([n], (Kind::Float, tch::Device::Cpu))
}

fn save(dir: &Path, config: serde_json::Value, tensors: Vec<(String, Tensor)>) {
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config).unwrap(),
    )
    .unwrap();
    Tensor::write_safetensors(&tensors, dir.join("model.safetensors")).expect("safetensors");
}

fn neox(dir: &Path) {
    let (v, d, layers, inter) = (50304, 128, 6, 512);
    let mut t = vec![("gpt_neox.embed_in.weight".to_string(), normal(&[v, d]))];
    for l in 0..layers {
        let p = |s: &str| format!("gpt_neox.layers.{l}.{s}");
        t.push((p("input_layernorm.weight"), ones(d)));
        t.push((p("input_layernorm.bias"), zeros(d)));
        t.push((p("post_attention_layernorm.weight"), ones(d)));
        t.push((p("post_attention_layernorm.bias"), zeros(d)));
        t.push((p("attention.query_key_value.weight"), normal(&[3 * d, d])));
        t.push((p("attention.query_key_value.bias"), zeros(3 * d)));
        t.push((p("attention.dense.weight"), normal(&[d, d])));
        t.push((p("attention.dense.bias"), zeros(d)));
        t.push((p("mlp.dense_h_to_4h.weight"), normal(&[inter, d])));
        t.push((p("mlp.dense_h_to_4h.bias"), zeros(inter)));
        t.push((p("mlp.dense_4h_to_h.weight"), normal(&[d, inter])));
        t.push((p("mlp.dense_4h_to_h.bias"), zeros(d)));
    }
    t.push(("gpt_neox.final_layer_norm.weight".into(), ones(d)));
    t.push(("gpt_neox.final_layer_norm.bias".into(), zeros(d)));
    t.push(("embed_out.weight".into(), normal(&[v, d])));
    let config = serde_json::json!({
        "architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "vocab_size": v,
        "hidden_size": d, "num_hidden_layers": layers, "num_attention_heads": 4,
        "intermediate_size": inter, "hidden_act": "gelu", "rotary_pct": 0.25,
        "rotary_emb_base": 10000, "max_position_embeddings": 2048, "layer_norm_eps": 1e-5,
        "use_parallel_residual": true, "tie_word_embeddings": false, "bos_token_id": 0,
        "eos_token_id": 0, "attention_bias": true, "torch_dtype": "float32"
    });
    save(dir, config, t);
}

fn llama(dir: &Path) {
    let (v, d, layers, inter, kv) = (32000, 128, 6, 352, 64);
    let mut t = vec![("model.embed_tokens.weight".to_string(), normal(&[v, d]))];
    for l in 0..layers {
        let p = |s: &str| format!("model.layers.{l}.{s}");
        t.push((p("self_attn.q_proj.weight"), normal(&[d, d])));
        t.push((p("self_attn.k_proj.weight"), normal(&[kv, d])));
        t.push((p("self_attn.v_proj.weight"), normal(&[kv, d])));
        t.push((p("self_attn.o_proj.weight"), normal(&[d, d])));
        t.push((p("mlp.gate_proj.weight"), normal(&[inter, d])));
        t.push((p("mlp.up_proj.weight"), normal(&[inter, d])));
        t.push((p("mlp.down_proj.weight"), normal(&[d, inter])));
        t.push((p("input_layernorm.weight"), ones(d)));
        t.push((p("post_attention_layernorm.weight"), ones(d)));
    }
    t.push(("model.norm.weight".into(), ones(d)));
    t.push(("lm_head.weight".into(), normal(&[v, d])));
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": v,
        "hidden_size": d, "num_hidden_layers": layers, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": inter, "hidden_act": "silu",
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "tie_word_embeddings": false, "attention_bias": false, "mlp_bias": false,
        "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32"
    });
    save(dir, config, t);
}

/// Gemma-2 with its soft-caps (scores 50, logits 30): the written-out attention and the capped
/// head. Norm gains are offsets from 1, so zero is a unit gain.
fn gemma2(dir: &Path) {
    let (v, d, layers, inter, heads, kv_heads, head_dim) = (50304, 128, 6, 352, 4, 2, 32);
    let mut t = vec![("model.embed_tokens.weight".to_string(), normal(&[v, d]))];
    for l in 0..layers {
        let p = |s: &str| format!("model.layers.{l}.{s}");
        t.push((p("self_attn.q_proj.weight"), normal(&[heads * head_dim, d])));
        t.push((
            p("self_attn.k_proj.weight"),
            normal(&[kv_heads * head_dim, d]),
        ));
        t.push((
            p("self_attn.v_proj.weight"),
            normal(&[kv_heads * head_dim, d]),
        ));
        t.push((p("self_attn.o_proj.weight"), normal(&[d, heads * head_dim])));
        t.push((p("mlp.gate_proj.weight"), normal(&[inter, d])));
        t.push((p("mlp.up_proj.weight"), normal(&[inter, d])));
        t.push((p("mlp.down_proj.weight"), normal(&[d, inter])));
        for norm in [
            "input_layernorm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "post_feedforward_layernorm",
        ] {
            t.push((p(&format!("{norm}.weight")), zeros(d)));
        }
    }
    t.push(("model.norm.weight".into(), zeros(d)));
    let config = serde_json::json!({
        "architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2", "vocab_size": v,
        "hidden_size": d, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "head_dim": head_dim, "intermediate_size": inter,
        "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "query_pre_attn_scalar": head_dim,
        "sliding_window": 4096, "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0, "tie_word_embeddings": true,
        "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0, "torch_dtype": "float32"
    });
    save(dir, config, t);
}
