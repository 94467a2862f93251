//! The `dfast` command line: argument parsing and terminal output over the library.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::convert::{self, ConvertOptions, ModelCard, Precision, Profile};
use crate::passes::Target;
use crate::pipeline::{self, GenerateOptions, Pipeline, PipelineDir};
use crate::runtime::{ExecutionProvider, Runtime};
use crate::scheduler::SchedulerKind;
use crate::{Error, Result};

#[derive(Parser, Debug)]
#[command(name = "dfast", version, about = "Fast text-to-image diffusion on ONNX Runtime")]
pub struct Cli {
    /// ONNX Runtime shared library to load (else ORT_DYLIB_PATH, else .ort/<flavour>/ of the checkout).
    #[arg(long, global = true, value_name = "PATH")]
    pub ort_lib: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Generate an image from a prompt.
    Generate(GenerateArgs),
    /// Rewrite an exported pipeline for one execution provider and precision, and save it.
    Convert(ConvertArgs),
    /// Show what is in an ONNX model or a pipeline folder.
    Inspect(InspectArgs),
}

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// Pipeline folder to convert (read only).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Optimization profile: baseline, sdpa, fuse-qkv, conv1x1, int8-dynamic, or a profile file.
    #[arg(long, value_name = "NAME|FILE")]
    pub profile: String,
    /// fp32, fp16 or bf16 (default: fp32 on cpu and openvino, fp16 on cuda and tensorrt).
    #[arg(long)]
    pub precision: Option<String>,
    /// Execution provider the graphs are rewritten for: cpu, cuda, tensorrt or openvino.
    #[arg(long, default_value = "cpu")]
    pub ep: String,
    /// Model card (sd15, sdxl, ssd-1b or a file); default: recognised from the UNet's config.
    #[arg(long, value_name = "NAME|FILE")]
    pub card: Option<String>,
    /// Convert the VAE decoder to fp16/bf16 even where the model card keeps it fp32 (SDXL).
    #[arg(long)]
    pub vae_half: bool,
    /// Output folder: a complete pipeline plus dfast-manifest.json.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// An ONNX model file or a pipeline folder.
    pub path: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Image width FLOPs are counted at.
    #[arg(long, default_value_t = 512)]
    pub width: usize,
    /// Image height FLOPs are counted at.
    #[arg(long, default_value_t = 512)]
    pub height: usize,
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Pipeline folder (ONNX layout) or Hugging Face repo id in the local cache; default: the embedded tiny-sd.
    #[arg(long, value_name = "DIR|REPO_ID")]
    pub model: Option<String>,
    #[arg(long)]
    pub prompt: String,
    #[arg(long)]
    pub negative_prompt: Option<String>,
    /// Denoising steps (default 50, as diffusers).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Classifier-free guidance scale (default 7.5 for SD, 5.0 for SDXL).
    #[arg(long)]
    pub guidance: Option<f32>,
    /// Seed of the initial noise, drawn as torch.Generator("cpu").manual_seed(N) does (default: random).
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub width: Option<usize>,
    #[arg(long)]
    pub height: Option<usize>,
    /// Scheduler class: euler, ddim, pndm or dpm++ (configured from the pipeline's scheduler config).
    #[arg(long)]
    pub scheduler: Option<String>,
    /// A scheduler_config.json to use instead of the pipeline's own.
    #[arg(long, value_name = "FILE")]
    pub scheduler_config: Option<PathBuf>,
    /// Initial latents (.npy, float32, [1, 4, H/8, W/8]) as diffusers' `latents=` argument takes them.
    #[arg(long, value_name = "FILE.npy")]
    pub latents: Option<PathBuf>,
    /// Write the final latents (before VAE scaling) as .npy.
    #[arg(long, value_name = "FILE.npy")]
    pub save_latents: Option<PathBuf>,
    /// Execution provider.
    #[arg(long, default_value = "cpu")]
    pub ep: String,
    /// Output image (.png, .jpg or .jpeg).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// Runs the command line and returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Generate(args) => generate(args, cli.ort_lib),
        Command::Convert(args) => convert(args),
        Command::Inspect(args) => inspect(args),
    }
}

fn convert(args: ConvertArgs) -> Result<()> {
    let target = Target::from_name(&args.ep)?;
    let precision = match &args.precision {
        Some(p) => Precision::from_name(p)?,
        None => Precision::default_for(target),
    };
    let profile = Profile::load(&args.profile)?;
    let card = args.card.as_deref().map(ModelCard::load).transpose()?;
    let opts = ConvertOptions {
        source: args.model,
        out: args.out,
        profile,
        precision,
        target,
        card,
        vae_half: args.vae_half,
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg:24} [{bar:30}] {pos}/{len} components, {elapsed}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let result = convert::convert(&opts, &mut |event| match event {
        convert::Event::Component { name, index, total } => {
            bar.set_length(total as u64);
            bar.set_position(index as u64);
            bar.set_message(name.to_string());
        }
        convert::Event::ComponentDone { .. } => bar.inc(1),
    });
    bar.finish_and_clear();
    let manifest = result?;
    for c in &manifest.components {
        let changed: Vec<String> = c
            .passes
            .iter()
            .filter(|p| !p.unchanged())
            .map(|p| format!("{} ({} rewrites)", p.pass, p.rewrites))
            .collect();
        println!(
            "{:16} {:5} -> {:5} nodes, {}{}",
            c.component,
            c.nodes_before,
            c.nodes_after,
            c.precision.name(),
            if changed.is_empty() { String::new() } else { format!(", {}", changed.join(", ")) }
        );
    }
    println!(
        "{}: profile {}, {}, ep {}, {:.1} s",
        opts.out.display(),
        manifest.profile,
        manifest.precision.name(),
        manifest.execution_provider.name(),
        manifest.seconds
    );
    Ok(())
}

fn inspect(args: InspectArgs) -> Result<()> {
    let size = crate::inspect::Size { width: args.width, height: args.height };
    let reports = crate::inspect::inspect(&args.path, size)?;
    if args.json {
        let text = serde_json::to_string_pretty(&reports).map_err(|e| Error::runtime(format!("json: {e}")))?;
        println!("{text}");
    } else {
        print!("{}", crate::inspect::render_text(&reports, size));
    }
    Ok(())
}

fn generate(args: GenerateArgs, ort_lib: Option<PathBuf>) -> Result<()> {
    // Cheap checks first, so that bad input fails before any model is loaded.
    let ep = ExecutionProvider::from_name(&args.ep)?;
    let scheduler = args.scheduler.as_deref().map(SchedulerKind::from_name).transpose()?;
    pipeline::image::format_for(&args.out)?;
    check_writable(&args.out)?;
    if let Some(path) = &args.save_latents {
        check_writable(path)?;
    }
    let dir = PipelineDir::resolve(args.model.as_deref())?;
    let seed = args.seed.unwrap_or_else(random_seed);
    let opts = GenerateOptions {
        prompt: args.prompt,
        negative_prompt: args.negative_prompt,
        steps: args.steps,
        guidance: args.guidance,
        seed,
        width: args.width,
        height: args.height,
        scheduler,
        scheduler_config: args.scheduler_config,
        latents: args.latents,
    };

    let runtime = Runtime::new(ep, ort_lib.as_deref())?;
    let mut pipe = Pipeline::load(&runtime, dir)?;
    pipe.resolve_size(&opts)?;

    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} steps, {elapsed} ({per_sec})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message("denoising");
    let result = pipe.generate(&opts, &mut |i, n| {
        bar.set_length(n as u64);
        bar.set_position(i as u64);
    });
    bar.finish_and_clear();
    let out = result?;
    for w in &out.warnings {
        eprintln!("warning: {w}");
    }
    pipeline::image::save(&out.image, &args.out)?;
    if let Some(path) = &args.save_latents {
        pipeline::latents::write(path, &out.latents)?;
    }
    let t = &out.timings;
    let per_step =
        if t.unet_steps.is_empty() { 0.0 } else { t.unet_steps.iter().sum::<f64>() / t.unet_steps.len() as f64 };
    let calls = t.unet_steps.len();
    let steps = if calls == out.steps { format!("{calls} steps") } else { format!("{} steps ({calls} UNet calls)", out.steps) };
    println!(
        "{}: {}x{}, {steps}, seed {seed}, {:.1} ms/step, total {:.2} s (text {:.0} ms, vae {:.0} ms)",
        args.out.display(),
        out.width,
        out.height,
        per_step * 1e3,
        t.total,
        t.text_encoding * 1e3,
        t.vae_decode * 1e3
    );
    Ok(())
}

/// Fails early when a file cannot be created there (missing folder, read-only place).
fn check_writable(path: &std::path::Path) -> Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    if !parent.is_dir() {
        return Err(Error::bad_file(path, format!("cannot write here: folder {} does not exist", parent.display())));
    }
    if path.is_dir() {
        return Err(Error::bad_file(path, "cannot write here: it is a folder; expected a file name"));
    }
    Ok(())
}

fn random_seed() -> u64 {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    (nanos as u64 ^ (std::process::id() as u64) << 32) % 1_000_000_007
}
