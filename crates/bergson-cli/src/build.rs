//! `bergson build` / `bergson reduce`.

use bergson::config::run_file::Step;
use bergson::config::BuildConfig;
use clap::Args;

/// Flags of `bergson build`: Bergson's config plus how to run it (not saved in config.yaml).
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The run's config (Bergson's flags).
    #[command(flatten)]
    pub config: BuildConfig,
    /// How to run it.
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// Execution settings that do not change the index.
#[derive(Debug, Args, Default)]
#[command(rename_all = "snake_case")]
pub struct RuntimeArgs {
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// No progress bar and no summary line.
    #[arg(long)]
    pub quiet: bool,
    /// libtorch intra-op threads (default: all cores).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
    pub num_threads: Option<i32>,
}

/// Runs a build (or, with `reduce`, the same pipeline saved as a `reduce` step): in this
/// process, as one rank of a job (`WORLD_SIZE` set by torchrun or our launcher), or, with
/// `--nproc_per_node N`, as the launcher of N workers.
pub fn run(config: BuildConfig, runtime: &RuntimeArgs, reduce: bool) -> anyhow::Result<()> {
    use bergson::dist::{self, launch::Role};
    let role = dist::launch::role(&config.index_cfg.distributed).map_err(bergson::Error::from)?;
    let opts = run_options(runtime)?;
    install_interrupt_handler();
    let summary = match role {
        Role::Launcher(node) => {
            let step = if reduce {
                Step::Reduce(Box::new(config))
            } else {
                Step::Build(Box::new(config))
            };
            let program = std::env::current_exe()?;
            dist::launch::run_step(&program, &step, &runtime.flags(), &node)?;
            return Ok(());
        }
        Role::Worker => match as_rank(|c| bergson::build::run_in(&config, &opts, c, reduce))? {
            Some(summary) => summary,
            None => return Ok(()),
        },
        Role::Single if reduce => bergson::build::reduce(&config, &opts)?,
        Role::Single => bergson::build::run(&config, &opts)?,
    };
    if !runtime.quiet {
        eprintln!("{summary}");
    }
    if config.index_cfg.profile {
        eprintln!("{}", summary.profile);
    }
    Ok(())
}

/// Runs `work` as this process's rank of a job (joined from the environment): a failure is
/// explained by the job's watcher when another rank caused it, and the job is finished
/// cleanly. The result on rank 0, which reports it; `None` on the other ranks.
pub fn as_rank<T>(
    work: impl FnOnce(&dyn bergson::dist::Collective) -> bergson::Result<T>,
) -> anyhow::Result<Option<T>> {
    as_rank_shared(|group| work(&*group))
}

/// [`as_rank`] for work that keeps the job's collectives (training).
pub fn as_rank_shared<T>(
    work: impl FnOnce(std::rc::Rc<dyn bergson::dist::Collective>) -> bergson::Result<T>,
) -> anyhow::Result<Option<T>> {
    let job = bergson::dist::connect().map_err(bergson::Error::from)?;
    // One progress display per job: rank 0's.
    if job.rank() != 0 {
        bergson::progress::set_quiet(true);
    }
    let out = work(job.shared()).map_err(|e| job.explain(e))?;
    let lead = job.rank() == 0;
    job.finish().map_err(bergson::Error::from)?;
    Ok(lead.then_some(out))
}

impl RuntimeArgs {
    /// These settings as command-line flags (for the workers of a launcher).
    pub fn flags(&self) -> Vec<std::ffi::OsString> {
        let mut flags: Vec<std::ffi::OsString> =
            vec!["--device".into(), self.device.clone().into()];
        if self.quiet {
            flags.push("--quiet".into());
        }
        if let Some(n) = self.num_threads {
            flags.push(format!("--num_threads={n}").into());
        }
        flags
    }
}

/// The library's run options from the runtime flags (and libtorch's thread count).
pub fn run_options(runtime: &RuntimeArgs) -> anyhow::Result<bergson::build::RunOptions> {
    let device = bergson::engine::parse_device(if runtime.device.is_empty() {
        "cpu"
    } else {
        &runtime.device
    })?;
    if let Some(n) = runtime.num_threads {
        tch::set_num_threads(n);
    }
    Ok(bergson::build::RunOptions {
        device,
        quiet: runtime.quiet,
    })
}

/// The first Ctrl-C asks the running work to stop ([`bergson::interrupt`]: within a second,
/// leaving a resumable `<run_path>.part`); a second Ctrl-C exits at once.
pub fn install_interrupt_handler() {
    let _ = ctrlc::set_handler(|| {
        if bergson::interrupt::request() {
            std::process::exit(130);
        }
        // Our launcher's workers get the same Ctrl-C; the launcher says it once.
        if std::env::var_os(bergson::dist::launch::LAUNCHED).is_none() {
            eprintln!("\ninterrupted: stopping (Ctrl-C again to quit now)");
        }
    });
}
