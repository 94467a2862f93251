//! The `dfast` command line: argument parsing and terminal output over the library (part of the binary,
//! not the library: clap and indicatif stay out of `dfast`'s library API).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use dfast::bench::run::{self as bench_run, BenchOptions, Event as BenchEvent, Outcome};
use dfast::convert::{self, ConvertOptions, ModelCard, Profile, calibrate::CalibrationOptions};
use dfast::hub::{Event as HubEvent, HubLocation};
use dfast::manifest::Calibration;
use dfast::passes::registry;
use dfast::pipeline::from_hub::Components;
use dfast::pipeline::{self, GenerateOptions, Pipeline, PipelineDir};
use dfast::runtime::Runtime;
use dfast::scheduler::SchedulerKind;
use dfast::settings::{EpOptions, ExecutionProvider, Precision, PrecisionHint};
use dfast::{Error, Result};

#[derive(Parser, Debug)]
#[command(
    name = "dfast",
    version,
    about = "Fast text-to-image diffusion on ONNX Runtime",
    after_help = "Exit status: 0 on success, 1 for an error found while running, 2 for a bad argument."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Where ONNX Runtime comes from and the options of the EP's sessions (the commands that run models).
#[derive(Args, Debug)]
pub struct RuntimeArgs {
    /// ONNX Runtime shared library to load (else ORT_DYLIB_PATH, else .ort/<flavour>/ of the checkout).
    #[arg(long, value_name = "PATH")]
    pub ort_lib: Option<PathBuf>,
    /// An execution provider option (repeatable), over the ones a converted folder's manifest sets:
    /// e.g. cuda_graph=true, prefer_nhwc=true, precision=bf16 (openvino), threads=2. See the README.
    #[arg(long = "ep-option", value_name = "KEY=VALUE")]
    pub ep_option: Vec<String>,
    /// Show ONNX Runtime's own log: -v warnings and errors, -vv everything (default: nothing; its errors
    /// still reach you as dfast's).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// Where in a Hugging Face repo the pipeline is, when `--model` is a repo id (every command that takes one).
#[derive(Args, Debug)]
pub struct HubArgs {
    /// With a repo id: the revision (branch, tag or commit); default main (older ONNX exports live at
    /// revision `onnx`).
    #[arg(long, value_name = "REV")]
    pub revision: Option<String>,
    /// With a repo id: the folder of the repo that holds the pipeline (e.g. `onnx`).
    #[arg(long, value_name = "DIR")]
    pub subfolder: Option<String>,
}

/// A whole number of at least 1 (sizes, steps, counts).
fn positive(text: &str) -> std::result::Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("expected a positive whole number".into()),
    }
}

/// A finite number (`inf` and `nan` parse as floats, but no scale means them).
fn finite(text: &str) -> std::result::Result<f32, String> {
    match text.parse::<f32>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err("expected a finite number".into()),
    }
}

/// A percentile: a number in (0, 100].
fn percentile(text: &str) -> std::result::Result<f64, String> {
    match text.parse::<f64>() {
        Ok(p) if p > 0.0 && p <= 100.0 => Ok(p),
        _ => Err("expected a number in (0, 100]".into()),
    }
}

/// A strength: a number in (0, 1].
fn strength(text: &str) -> std::result::Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s > 0.0 && s <= 1.0 => Ok(s),
        _ => Err("expected a number in (0, 1]".into()),
    }
}

/// A seed: a whole number from 0 to 2^64 - 1.
fn seed(text: &str) -> std::result::Result<u64, String> {
    text.parse::<u64>().map_err(|_| format!("expected a whole number from 0 to {}", u64::MAX))
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Generate an image from a prompt.
    Generate(GenerateArgs),
    /// Rewrite an exported pipeline for one execution provider and precision, and save it.
    Convert(ConvertArgs),
    /// Show what is in an ONNX model or a pipeline folder.
    Inspect(InspectArgs),
    /// Collate benchmark result folders into one CSV, a Markdown table with speed-ups, and a bar chart.
    Report(ReportArgs),
    /// Benchmark profiles x precisions x execution providers: one CSV row and one image per combination.
    Bench(BenchArgs),
    /// Measure one combination (used by `bench`, one process per combination): a JSON job in, a JSON answer out.
    #[command(hide = true)]
    BenchWorker(BenchWorkerArgs),
    /// Time one UNet call on inputs from an .npz and save its output (to compare with other runtimes).
    UnetStep(UnetStepArgs),
    /// Time each distinct conv/linear shape of the UNet in int8 and in the alternative precision on this
    /// machine, and write a profile whose exclude list holds the shapes where int8 loses.
    Tune(TuneArgs),
    /// Print a shell completion script (e.g. `dfast completions bash > /etc/bash_completion.d/dfast`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// The image size and scheduler, shared by generate and bench.
#[derive(Args, Debug)]
pub struct SizeArgs {
    /// Image width in pixels, a multiple of the model's size step (the VAE's scale factor x 2^(the UNet's
    /// downsamplings): 64 for SD, 32 for SDXL; PixArt: any, or 16 without resolution binning); default: the
    /// model's own size.
    #[arg(long, allow_negative_numbers = true, value_parser = positive)]
    pub width: Option<usize>,
    /// Image height in pixels, a multiple of the model's size step, as --width; default: the model's own size.
    #[arg(long, allow_negative_numbers = true, value_parser = positive)]
    pub height: Option<usize>,
    /// Scheduler class (configured from the pipeline's scheduler config); default: the pipeline's own.
    #[arg(long, value_enum)]
    pub scheduler: Option<SchedulerKind>,
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Pipeline folder (ONNX layout) or Hugging Face repo id (from the cache, else downloaded into it);
    /// default: the embedded tiny-sd.
    #[arg(long, value_name = "DIR|REPO_ID")]
    pub model: Option<String>,
    #[command(flatten)]
    pub hub: HubArgs,
    /// What to draw.
    #[arg(long, required_unless_present = "prompt_file", conflicts_with = "prompt_file")]
    pub prompt: Option<String>,
    /// Prompts, one per line, or JSON objects per line with their own seed, width, height, steps and
    /// negative_prompt; one run each, written as OUT-0.png, OUT-1.png, ... (one pipeline load for all).
    /// Prompt i (from 0) is seeded --seed + i unless its line sets a seed; empty lines and lines starting
    /// with `#` (comments) are skipped.
    #[arg(long, value_name = "FILE")]
    pub prompt_file: Option<PathBuf>,
    /// What to steer away from (classifier-free guidance's unconditional prompt; default empty).
    #[arg(long)]
    pub negative_prompt: Option<String>,
    /// Denoising steps (default 50 for SD and SDXL, 20 for PixArt, as diffusers).
    #[arg(long, allow_negative_numbers = true, value_parser = positive)]
    pub steps: Option<usize>,
    /// Classifier-free guidance scale (default 7.5 for SD, 5.0 for SDXL, 4.5 for PixArt; 1 or less turns
    /// guidance off).
    #[arg(long, allow_negative_numbers = true, value_parser = finite)]
    pub guidance: Option<f32>,
    /// Seed of the initial noise, drawn as torch.Generator("cpu").manual_seed(N) does (default: random).
    #[arg(long, allow_negative_numbers = true, value_parser = seed)]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub size: SizeArgs,
    /// A scheduler_config.json to use instead of the pipeline's own.
    #[arg(long, value_name = "FILE")]
    pub scheduler_config: Option<PathBuf>,
    /// Initial latents (.npy, float32, [1, 4, H/8, W/8]) as diffusers' `latents=` argument takes them.
    #[arg(long, value_name = "FILE.npy")]
    pub latents: Option<PathBuf>,
    /// img2img: the image to start from, at its size rounded down to a multiple of 8 (the VAE's factor), as
    /// diffusers' StableDiffusion(XL)Img2ImgPipeline; with --mask, inpainting.
    #[arg(long, value_name = "IN.png|IN.jpg")]
    pub image: Option<PathBuf>,
    /// Inpainting: the mask, the image's size, white where --image is repainted, black where it is kept (as
    /// diffusers' StableDiffusion(XL)InpaintPipeline; 4-channel and 9-channel inpainting UNets).
    #[arg(long, value_name = "MASK.png")]
    pub mask: Option<PathBuf>,
    /// With --image: how much of the schedule runs, in (0, 1] (default as diffusers: img2img 0.8 for SD, 0.3
    /// for SDXL; inpainting 1.0 for SD, 0.9999 for SDXL).
    #[arg(long, allow_negative_numbers = true, value_parser = strength)]
    pub strength: Option<f64>,
    /// Write the final latents (before VAE scaling) as .npy.
    #[arg(long, value_name = "FILE.npy")]
    pub save_latents: Option<PathBuf>,
    /// Execution provider.
    #[arg(long, value_enum, default_value_t = ExecutionProvider::Cpu)]
    pub ep: ExecutionProvider,
    /// Output image (.png, .jpg or .jpeg).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Images for the prompt, made in one batch through the UNet (diffusers' num_images_per_prompt): the
    /// noise for all of them is drawn from the one seed; files are named OUT-0.png, OUT-1.png, ...
    #[arg(long, default_value_t = 1, allow_negative_numbers = true, value_parser = positive)]
    pub num_images: usize,
    /// Print one JSON object (files written, size, steps, seed, timings) instead of the summary line.
    #[arg(long)]
    pub json: bool,
    /// PixArt: generate at the requested size itself, not at the nearest size of the model's aspect-ratio
    /// table (resized and cropped back afterwards), which diffusers' pipeline does by default.
    #[arg(long)]
    pub no_resolution_binning: bool,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// Pipeline folder to convert (read only), or Hugging Face repo id (from the cache, else downloaded).
    #[arg(long, value_name = "DIR|REPO_ID")]
    pub model: String,
    #[command(flatten)]
    pub hub: HubArgs,
    /// Optimization profile: a built-in name (see below) or a profile file.
    #[arg(long, value_name = "NAME|FILE")]
    pub profile: String,
    /// Weights and compute precision (default: fp32 on cpu and openvino, fp16 on cuda and tensorrt).
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
    /// Execution provider the graphs are rewritten for.
    #[arg(long, value_enum, default_value_t = ExecutionProvider::Cpu)]
    pub ep: ExecutionProvider,
    /// Convert with a profile made for other execution providers (a warning instead of an error).
    #[arg(long)]
    pub force: bool,
    /// Model card (sd15, sdxl, ssd-1b, pixart-alpha, pixart-alpha-512 or a file); default: recognised from the UNet's or transformer's config.
    #[arg(long, value_name = "NAME|FILE")]
    pub card: Option<String>,
    /// Convert the VAE decoder to fp16/bf16 even where the model card keeps it fp32 (SDXL).
    #[arg(long)]
    pub vae_half: bool,
    /// Output folder: a complete pipeline plus dfast-manifest.json.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// int8-static: calibrate on this many prompts (each one image through the source pipeline, fp32, CPU).
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub calibrate: usize,
    /// int8-static: denoising steps per calibration prompt (each UNet call is a sample).
    #[arg(long, value_name = "STEPS", default_value_t = 4)]
    pub calibrate_steps: usize,
    /// int8-static: reuse the ranges of an earlier conversion (its folder, or its unet/int8-calibration.json).
    #[arg(long, value_name = "DIR|FILE")]
    pub calibration_from: Option<PathBuf>,
    /// int8-static: the percentile of each activation's range (100: min and max).
    #[arg(long, value_name = "P", default_value_t = 99.99, value_parser = percentile)]
    pub calibration_percentile: f64,
    /// int8-static: the ONNX Runtime library (CPU build) calibration runs with (else the usual lookup).
    #[arg(long, value_name = "PATH")]
    pub ort_lib: Option<PathBuf>,
    /// int8-static: also write the recorded UNet inputs into this folder (sample-NNN.npz, one per UNet
    /// call, as `unet-step --inputs` reads them), to calibrate other tools on the same set.
    #[arg(long, value_name = "DIR")]
    pub save_calibration_inputs: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// An ONNX model file, a pipeline folder, a Hugging Face repo id (from the cache, else downloaded), or a
    /// PNG or JPEG that `dfast generate` wrote (prints how it was made).
    pub path: PathBuf,
    #[command(flatten)]
    pub hub: HubArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Image width FLOPs are counted at (default: a pipeline's own size, else 512).
    #[arg(long, allow_negative_numbers = true, value_parser = positive)]
    pub width: Option<usize>,
    /// Image height FLOPs are counted at (default: a pipeline's own size, else 512).
    #[arg(long, allow_negative_numbers = true, value_parser = positive)]
    pub height: Option<usize>,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Result folders, each with one or more benchmark CSVs (*.csv) from `dfast bench` or the PyTorch reference.
    #[arg(value_name = "DIR", required = true)]
    pub dirs: Vec<PathBuf>,
    /// Title of the report and the chart.
    #[arg(long, default_value = "dfast benchmark: total seconds per setting")]
    pub title: String,
    /// Output folder (created): results.csv, report.md, report.png.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Pipeline folder or Hugging Face repo id (from the cache, else downloaded); default: the embedded tiny-sd.
    #[arg(long, value_name = "DIR|REPO_ID")]
    pub model: Option<String>,
    #[command(flatten)]
    pub hub: HubArgs,
    /// Profiles (repeat or comma list); default: per EP, the built-in profiles marked `bench = true` and
    /// made for that EP (the seed's progression, plus cuda-graph on cuda).
    #[arg(long, value_delimiter = ',')]
    pub profile: Vec<String>,
    /// Precisions (repeat or comma list); default: each execution provider's own.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub precision: Vec<Precision>,
    /// Execution providers (repeat or comma list); default: cpu.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub ep: Vec<ExecutionProvider>,
    #[command(flatten)]
    pub size: SizeArgs,
    /// Denoising steps; default: the model card's, else 30.
    #[arg(long, allow_negative_numbers = true, value_parser = positive)]
    pub steps: Option<usize>,
    /// Images per prompt (the UNet sees twice that with guidance).
    #[arg(long, default_value_t = 1, allow_negative_numbers = true, value_parser = positive)]
    pub batch_size: usize,
    /// Whole-pipeline runs before timing (after the first run, which is timed on its own).
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Timed runs (median, min and max are reported).
    #[arg(long, default_value_t = 5, allow_negative_numbers = true, value_parser = positive)]
    pub runs: usize,
    #[arg(long, default_value = bench_run::DEFAULT_PROMPT)]
    pub prompt: String,
    /// Free text stored in every row.
    #[arg(long, default_value = "")]
    pub tag: String,
    /// Keep earlier rows of the same setting in results.csv (default: a new measurement replaces them).
    #[arg(long)]
    pub append: bool,
    /// Print the measured rows and the skipped combinations as one JSON object instead of text lines.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Results folder: results.csv, one image per row, converted pipelines under converted/.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct BenchWorkerArgs {
    /// The job (bench::run::WorkerJob as JSON).
    #[arg(long, value_name = "FILE.json")]
    pub job: PathBuf,
    /// Where the answer (bench::run::WorkerAnswer as JSON) goes.
    #[arg(long, value_name = "FILE.json")]
    pub answer: PathBuf,
}

#[derive(Args, Debug)]
pub struct TuneArgs {
    /// Exported pipeline folder (ONNX layout), or Hugging Face repo id (from the cache, else downloaded).
    #[arg(long, value_name = "DIR|REPO_ID")]
    pub model: String,
    #[command(flatten)]
    pub hub: HubArgs,
    /// The execution provider to time on: openvino (int8-static), cpu or cuda (int8-dynamic).
    #[arg(long, value_enum)]
    pub ep: ExecutionProvider,
    /// What int8 is weighed against: openvino auto (default; bf16 where the CPU has it, else f32), f32,
    /// bf16, f16; cpu fp32; cuda fp16 (default), bf16, fp32.
    #[arg(long)]
    pub precision: Option<String>,
    /// The profile to write (default profiles/local-<ep>.toml).
    #[arg(long, value_name = "FILE.toml")]
    pub out: Option<PathBuf>,
    /// The measurements (default: next to --out, .timings.json).
    #[arg(long, value_name = "FILE.json")]
    pub timings: Option<PathBuf>,
    /// Image width and height the shapes are traced at; default: the model's own size.
    #[arg(long, value_parser = positive)]
    pub width: Option<usize>,
    #[arg(long, value_parser = positive)]
    pub height: Option<usize>,
    /// Untimed calls per shape.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Timed calls per shape (the median counts).
    #[arg(long, default_value_t = 5, value_parser = positive)]
    pub runs: usize,
    /// Timed calls of the whole UNet step, in each precision (0: no whole-step measurement).
    #[arg(long, default_value_t = 3)]
    pub step_runs: usize,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

#[derive(Args, Debug)]
pub struct UnetStepArgs {
    /// Pipeline folder (its unet/model.onnx, with a conversion's session options) or an ONNX model file.
    pub model: PathBuf,
    /// Inputs: an .npz with one array per UNet input, named like the inputs.
    #[arg(long, value_name = "FILE.npz")]
    pub inputs: PathBuf,
    /// Write the UNet's output here (.npy, float32).
    #[arg(long, value_name = "FILE.npy")]
    pub output: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = ExecutionProvider::Cpu)]
    pub ep: ExecutionProvider,
    /// Untimed calls after the first.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Timed calls.
    #[arg(long, default_value_t = 3, allow_negative_numbers = true, value_parser = positive)]
    pub runs: usize,
    /// Print the report as one JSON line.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// `dfast convert --help`'s list of passes and built-in profiles, from the pass registry and the profiles.
fn convert_help() -> String {
    let mut text = String::from("Passes (a profile names them; see the README for their options):\n");
    for pass in registry::PASSES {
        text.push_str(&format!("  {:14} {}\n", pass.name, pass.summary));
    }
    text.push_str("\nBuilt-in profiles:\n");
    for (name, _) in convert::profile::BUILTIN {
        if let Ok(p) = Profile::load(name) {
            text.push_str(&format!("  {:14} {} [{}]\n", p.name, p.description, p.eps_label()));
        }
    }
    text
}

/// `dfast --version`: the version, the commit it was built from, and the ONNX Runtime libraries it finds.
fn long_version() -> String {
    use dfast::runtime::{Flavour, library};
    let mut text = format!("{} (commit {})", env!("CARGO_PKG_VERSION"), env!("DFAST_COMMIT"));
    for flavour in [Flavour::Cpu, Flavour::Gpu, Flavour::OpenVino] {
        let found = match library::find(None, flavour) {
            Ok(path) => format!("{}", path.display()),
            Err(_) => format!("not found (experiment-scripts/setup_ort.sh {})", flavour.name()),
        };
        text.push_str(&format!("\nONNX Runtime {} ({}): {found}", flavour.version(), flavour.name()));
    }
    text
}

/// Runs the command line and returns the process exit code.
pub fn main() -> i32 {
    let command = Cli::command()
        .version(concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("DFAST_COMMIT"), ")"))
        .long_version(long_version())
        .mut_subcommand("convert", |c| c.after_help(convert_help()));
    let parsed = command.try_get_matches().and_then(|m| Cli::from_arg_matches(&m));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) if e.kind() == ErrorKind::InvalidValue => {
            eprintln!("error: {}", invalid_value(&e));
            return 2;
        }
        Err(e) if e.kind() == ErrorKind::ValueValidation => {
            eprintln!("error: {}", invalid_number(&e));
            return 2;
        }
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

/// clap's invalid-value error as one sentence: "unknown execution provider `tpu`; expected one of: ...".
fn invalid_value(e: &clap::Error) -> String {
    let context = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => s.clone(),
        Some(ContextValue::Strings(v)) => v.join(", "),
        _ => String::new(),
    };
    let arg = context(ContextKind::InvalidArg);
    let what = match arg.split_whitespace().next().unwrap_or_default() {
        "--ep" => "execution provider".to_string(),
        "--precision" => "precision".to_string(),
        "--scheduler" => "scheduler".to_string(),
        other => format!("value for {other}"),
    };
    let valid = context(ContextKind::ValidValue);
    let expected = if valid.is_empty() { String::new() } else { format!("; expected one of: {valid}") };
    format!("unknown {what} `{}`{expected}", context(ContextKind::InvalidValue))
}

/// clap's error for a value its parser refused, as one sentence naming the flag.
fn invalid_number(e: &clap::Error) -> String {
    let context = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => s.clone(),
        _ => String::new(),
    };
    let arg = context(ContextKind::InvalidArg);
    let flag = arg.split_whitespace().next().unwrap_or_default();
    let why = std::error::Error::source(e).map(ToString::to_string).unwrap_or_else(|| "not accepted".into());
    format!("invalid value `{}` for {flag}: {why}", context(ContextKind::InvalidValue))
}

pub fn run(cli: Cli) -> Result<()> {
    let verbosity = match &cli.command {
        Command::Generate(a) => a.runtime.verbose,
        Command::Bench(a) => a.runtime.verbose,
        Command::UnetStep(a) => a.runtime.verbose,
        Command::Tune(a) => a.runtime.verbose,
        _ => 0,
    };
    dfast::runtime::library::set_log_verbosity(verbosity);
    match cli.command {
        Command::Generate(args) => {
            let (ort_lib, ep_options) = (args.runtime.ort_lib.clone(), EpOptions::parse(&args.runtime.ep_option)?);
            generate(args, ort_lib, ep_options)
        }
        Command::Convert(args) => {
            let ort_lib = args.ort_lib.clone();
            convert(args, ort_lib)
        }
        Command::Inspect(args) => inspect(args),
        Command::Report(args) => report(args),
        Command::Bench(args) => {
            let (ort_lib, ep_options) = (args.runtime.ort_lib.clone(), EpOptions::parse(&args.runtime.ep_option)?);
            bench(args, ort_lib, ep_options)
        }
        Command::BenchWorker(args) => {
            let bar = progress("  runs [{bar:30}] {pos}/{len}, {elapsed}");
            let result = bench_run::answer_job(&args.job, &args.answer, &mut |i, n| {
                bar.set_length(n as u64);
                bar.set_position(i as u64);
            });
            bar.finish_and_clear();
            result
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "dfast", &mut std::io::stdout());
            Ok(())
        }
        Command::UnetStep(args) => {
            let (ort_lib, ep_options) = (args.runtime.ort_lib.clone(), EpOptions::parse(&args.runtime.ep_option)?);
            unet_step(args, ort_lib, ep_options)
        }
        Command::Tune(args) => tune(args),
    }
}

/// A progress bar with `template` (drawn on stderr only when it is a terminal).
fn progress(template: &str) -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(ProgressStyle::with_template(template).expect("valid template").progress_chars("=> "));
    bar
}

/// A line above the progress bar, or plainly when there is no terminal to draw the bar on.
fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        println!("{line}");
    } else {
        bar.println(line);
    }
}

/// `--model` as a pipeline folder: a folder as it is, a repo id from the Hugging Face cache or downloaded into
/// it (the files `components` says the command reads), one progress bar per file downloaded.
fn pipeline_dir(model: Option<&str>, hub: &HubArgs, components: Components) -> Result<PipelineDir> {
    let location = HubLocation { revision: hub.revision.clone(), subfolder: hub.subfolder.clone() };
    let mut bar: Option<ProgressBar> = None;
    let result = PipelineDir::resolve(model, &location, components, &mut |event| match event {
        HubEvent::Started { file, size, resumed_from } => {
            let b = progress("{msg:40} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}");
            b.set_length(size.unwrap_or(0));
            b.set_position(resumed_from);
            b.set_message(if resumed_from > 0 { format!("{file} (resumed)") } else { file.to_string() });
            bar = Some(b);
        }
        HubEvent::Progress { bytes, .. } => {
            if let Some(b) = &bar {
                b.set_position(bytes);
            }
        }
        HubEvent::Finished { .. } => {
            if let Some(b) = bar.take() {
                b.finish();
            }
        }
    });
    if let Some(b) = bar.take() {
        b.abandon();
    }
    result
}

/// The name of a repo id's model (`stabilityai/sdxl-turbo` -> `sdxl-turbo`), for bench rows; None for a folder.
fn repo_name(model: Option<&str>) -> Option<String> {
    let spec = model?;
    if Path::new(spec).exists() || !dfast::hub::is_repo_id(spec) {
        return None;
    }
    spec.rsplit('/').next().map(str::to_string)
}

fn bench(args: BenchArgs, ort_lib: Option<PathBuf>, ep_options: EpOptions) -> Result<()> {
    check_out_dir(&args.out)?;
    let json = args.json;
    let eps = if args.ep.is_empty() { vec![ExecutionProvider::Cpu] } else { args.ep };
    let precisions =
        if args.precision.is_empty() { vec![None] } else { args.precision.into_iter().map(Some).collect() };
    let dir = pipeline_dir(args.model.as_deref(), &args.hub, Components::Pipeline)?;
    let opts = BenchOptions {
        model: dir.root,
        model_name: repo_name(args.model.as_deref()),
        profiles: args.profile,
        precisions,
        eps,
        scheduler: args.size.scheduler,
        steps: args.steps,
        batch_size: args.batch_size,
        width: args.size.width,
        height: args.size.height,
        warmup: args.warmup,
        runs: args.runs,
        prompt: args.prompt,
        tag: args.tag,
        out: args.out,
        ort_lib,
        ep_options,
        append: args.append,
        log_verbosity: args.runtime.verbose,
    };
    // Ctrl-C: stop the worker, remove the files in flight (job files, an image without its row) and the
    // folder's lock, then end as a shell expects of an interrupted command.
    let _ = ctrlc::set_handler(|| {
        dfast::bench::lock::interrupt(&|pid| {
            // SAFETY: kill(2) with a process id and a signal number; it touches no memory of ours.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        });
        eprintln!("\nerror: interrupted; the rows measured so far are in results.csv");
        std::process::exit(130);
    });
    let bar = progress("{msg:40} [{bar:30}] {pos}/{len} combinations, {elapsed}");
    bar.set_length(bench_run::combinations(&opts)?.len() as u64);
    let exe = std::env::current_exe().map_err(|e| Error::io("dfast", "cannot find the dfast binary", e))?;
    let worker = bench_run::WorkerCommand::binary(exe);
    let outcomes = bench_run::run_bench(&opts, &worker, &mut |event| match event {
        BenchEvent::Converting(c) => bar.set_message(format!("converting {}", c.label())),
        BenchEvent::Measuring(c) => bar.set_message(format!("measuring {}", c.label())),
        BenchEvent::Done(outcome) => {
            bar.inc(1);
            let line = match outcome {
                Outcome::Measured(r) => format!(
                    "{:12} {:5} {:9} total {:8.3} s, unet step {:8.1} ms, vae {:7.1} ms, peak {:6.0} MB",
                    r.profile, r.precision, r.ep, r.total_s, r.unet_step_ms, r.vae_decode_ms, r.peak_host_mb
                ),
                Outcome::Skipped { combination, reason } => format!("skipped {}: {reason}", combination.label()),
            };
            // With --json, stdout holds the JSON alone; the lines go to stderr.
            if json { bar.suspend(|| eprintln!("{line}")) } else { say(&bar, line) }
        }
    });
    bar.finish_and_clear();
    let outcomes = outcomes?;
    let measured = outcomes.iter().filter(|o| matches!(o, Outcome::Measured(_))).count();
    if json {
        let rows: Vec<&dfast::bench::Row> =
            outcomes.iter().filter_map(|o| if let Outcome::Measured(r) = o { Some(&**r) } else { None }).collect();
        let skipped: Vec<serde_json::Value> = outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Skipped { combination, reason } => {
                    Some(serde_json::json!({"combination": combination.label(), "reason": reason}))
                }
                Outcome::Measured(_) => None,
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"rows": rows, "skipped": skipped, "results": opts.out.join(dfast::bench::RESULTS_CSV)})
        );
        return Ok(());
    }
    println!(
        "{}: {measured} rows in {}, {} skipped",
        opts.out.display(),
        dfast::bench::RESULTS_CSV,
        outcomes.len() - measured
    );
    Ok(())
}

fn convert(args: ConvertArgs, ort_lib: Option<PathBuf>) -> Result<()> {
    check_out_dir(&args.out)?;
    // The profile and the card are checked before a repo is downloaded.
    let profile = Profile::load(&args.profile)?;
    let card = args.card.as_deref().map(ModelCard::load).transpose()?;
    let source = pipeline_dir(Some(&args.model), &args.hub, Components::WithVaeEncoder)?.root;
    let opts = ConvertOptions {
        source,
        out: args.out,
        profile,
        precision: args.precision.unwrap_or(Precision::default_for(args.ep)),
        target: args.ep,
        card,
        vae_half: args.vae_half,
        calibration: CalibrationOptions {
            settings: Calibration {
                prompts: args.calibrate,
                steps: args.calibrate_steps,
                width: None,
                height: None,
                from: args.calibration_from,
                percentile: args.calibration_percentile,
            },
            ort_lib,
            save_inputs: args.save_calibration_inputs,
        },
        force: args.force,
    };
    let bar = progress("{msg:24} [{bar:30}] {pos}/{len} components, {elapsed}");
    let result = convert::convert(&opts, &mut |event| match event {
        convert::Event::Component { name, index, total } => {
            bar.set_length(total as u64);
            bar.set_position(index as u64);
            bar.set_message(name.to_string());
        }
        convert::Event::ComponentDone { .. } => bar.inc(1),
        convert::Event::Warning(w) => bar.suspend(|| eprintln!("warning: {w}")),
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
        let changed = if changed.is_empty() { String::new() } else { format!(", {}", changed.join(", ")) };
        println!("{:16} {:5} -> {:5} nodes, {}{changed}", c.component, c.nodes_before, c.nodes_after, c.precision);
    }
    println!(
        "{}: profile {}, {}, ep {}, {:.1} s",
        opts.out.display(),
        manifest.profile,
        manifest.precision,
        manifest.execution_provider,
        manifest.seconds
    );
    Ok(())
}

fn report(args: ReportArgs) -> Result<()> {
    check_out_dir(&args.out)?;
    let summary = dfast::bench::report::report(&args.dirs, &args.title, &args.out)?;
    for warning in &summary.warnings {
        eprintln!("warning: {warning}");
    }
    let files: Vec<String> = summary.files.iter().map(|f| f.display().to_string()).collect();
    println!(
        "{} rows from {} folders, models {}: wrote {}",
        summary.rows,
        args.dirs.len(),
        summary.models.join(", "),
        files.join(", ")
    );
    Ok(())
}

fn inspect(args: InspectArgs) -> Result<()> {
    if pipeline::image::format_for(&args.path).is_ok() {
        // An image dfast made: how it was made, from its PNG text chunks or JPEG EXIF.
        let text = pipeline::image::read_text(&args.path)?;
        if args.json {
            let map: serde_json::Map<String, serde_json::Value> =
                text.into_iter().map(|(k, v)| (k, v.into())).collect();
            println!("{}", serde_json::Value::Object(map));
        } else if text.is_empty() {
            let place = if args.path.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")) {
                "no text chunks"
            } else {
                "no EXIF metadata"
            };
            println!("{}: {place} (not made by dfast generate?)", args.path.display());
        } else {
            for (key, value) in text {
                println!("{key}: {value}");
            }
        }
        return Ok(());
    }
    // A repo id (or --revision / --subfolder) names a pipeline in the Hugging Face cache or on the Hub.
    let spec = args.path.to_string_lossy();
    let from_hub = args.hub.revision.is_some()
        || args.hub.subfolder.is_some()
        || (!args.path.exists() && dfast::hub::is_repo_id(&spec));
    let path = if from_hub { pipeline_dir(Some(&spec), &args.hub, Components::All)?.root } else { args.path.clone() };
    let own = dfast::inspect::Size::default_for(&path);
    let size =
        dfast::inspect::Size { width: args.width.unwrap_or(own.width), height: args.height.unwrap_or(own.height) };
    let reports = dfast::inspect::inspect(&path, size)?;
    if args.json {
        let text = serde_json::to_string_pretty(&reports).map_err(|e| Error::internal(format!("json: {e}")))?;
        println!("{text}");
    } else {
        print!("{}", dfast::inspect::render_text(&reports, size));
    }
    Ok(())
}

fn tune(args: TuneArgs) -> Result<()> {
    use dfast::tune::{TuneOptions, profile_text, tune};
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from(format!("profiles/local-{}.toml", args.ep.name())));
    if out.extension().and_then(|e| e.to_str()) != Some("toml") {
        return Err(Error::bad_file(&out, "--out must name a .toml profile file"));
    }
    check_writable(&out)?;
    let timings = args.timings.clone().unwrap_or_else(|| out.with_extension("timings.json"));
    check_writable(&timings)?;
    let name = out.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "local".into());
    let ep_options = EpOptions::parse(&args.runtime.ep_option)?;
    let precision = args
        .precision
        .as_deref()
        .map(|p| {
            PrecisionHint::parse(p).ok_or_else(|| {
                let names = PrecisionHint::NAMES.join(", ");
                Error::bad_input(format!("--precision `{p}` is not one dfast tune knows; expected one of: {names}"))
            })
        })
        .transpose()?;
    // Arguments are checked before a repo is downloaded.
    let opts = TuneOptions {
        model: pipeline_dir(Some(&args.model), &args.hub, Components::Pipeline)?.root,
        ep: args.ep,
        precision,
        out: out.clone(),
        timings: timings.clone(),
        width: args.width,
        height: args.height,
        warmup: args.warmup,
        runs: args.runs,
        step_runs: args.step_runs,
        ort_lib: args.runtime.ort_lib.clone(),
        ep_options,
    };
    let report = tune(&opts, &mut |line| eprintln!("tune: {line}"))?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let text = profile_text(&report, &name, &command);
    std::fs::write(&out, &text).map_err(|e| Error::io(&out, "cannot write", e))?;
    let json = serde_json::to_string_pretty(&report).map_err(|e| Error::internal(format!("json: {e}")))?;
    std::fs::write(&timings, json + "\n").map_err(|e| Error::io(&timings, "cannot write", e))?;
    let alt = &report.precision;
    println!(
        "{} shapes timed ({} nodes); int8 slower on {} of {} [in, out] pairs: exclude = {:?}",
        report.shapes.len(),
        report.shapes.iter().map(|s| s.nodes).sum::<usize>(),
        report.exclude.len(),
        report.decisions.len(),
        report.exclude
    );
    println!(
        "convs and linears, summed over the nodes: {alt} {:.1} ms, int8 {:.1} ms, as decided {:.1} ms",
        report.sum_alt_ms, report.sum_int8_ms, report.sum_chosen_ms
    );
    if let Some(step) = &report.step {
        let off = (step.predicted_ms / step.tuned_ms - 1.0) * 100.0;
        println!(
            "UNet step: {alt} {:.1} ms measured; as decided: predicted {:.1} ms, measured {:.1} ms ({off:+.1}%)",
            step.alt_ms, step.predicted_ms, step.tuned_ms
        );
    }
    println!("wrote {} and {} ({:.0} s)", out.display(), timings.display(), report.seconds);
    Ok(())
}

fn unet_step(args: UnetStepArgs, ort_lib: Option<PathBuf>, ep_options: EpOptions) -> Result<()> {
    use dfast::bench::unet_step::{StepOptions, unet_step};
    if let Some(path) = &args.output {
        check_writable(path)?;
    }
    let runtime = Runtime::with_options(args.ep, ep_options, ort_lib.as_deref())?;
    let opts = StepOptions {
        model: args.model,
        inputs: args.inputs,
        output: args.output,
        warmup: args.warmup,
        runs: args.runs,
    };
    let report = unet_step(&runtime, &opts)?;
    if args.json {
        println!("{}", serde_json::to_string(&report).map_err(|e| Error::internal(format!("json: {e}")))?);
    } else {
        println!(
            "{}: ep {}{}, median {:.1} ms, min {:.1} ms over {} runs (first {:.1} ms, session {:.2} s)",
            report.model,
            report.ep,
            if report.io_binding { " with IoBinding" } else { "" },
            report.median_s * 1e3,
            report.min_s * 1e3,
            report.runs_s.len(),
            report.first_run_s * 1e3,
            report.session_create_s
        );
    }
    Ok(())
}

fn generate(args: GenerateArgs, ort_lib: Option<PathBuf>, ep_options: EpOptions) -> Result<()> {
    // Cheap checks first, so that bad input fails before any model is loaded.
    pipeline::image::format_for(&args.out)?;
    check_writable(&args.out)?;
    if let Some(path) = &args.save_latents {
        check_writable(path)?;
    }
    let jobs = match (&args.prompt_file, &args.prompt) {
        (Some(file), _) => pipeline::prompt_file::read(file)?,
        (None, Some(prompt)) => vec![pipeline::prompt_file::PromptJob { prompt: prompt.clone(), ..Default::default() }],
        (None, None) => return Err(Error::bad_input("give --prompt or --prompt-file")),
    };
    // img2img and inpainting also read the VAE encoder.
    let components = if args.image.is_some() { Components::WithVaeEncoder } else { Components::Pipeline };
    let dir = pipeline_dir(args.model.as_deref(), &args.hub, components)?;
    // The image and mask are read and checked before any model is loaded.
    let images = GenerateOptions {
        image: args.image.clone(),
        mask: args.mask.clone(),
        strength: args.strength,
        latents: args.latents.clone(),
        ..Default::default()
    };
    pipeline::img2img::ImageTask::read(&images, dir.kind)?;
    // Every size asked for, on the command line and on each line of a prompt file, fits the model.
    let step = dir.size_step(!args.no_resolution_binning)?;
    step.check([("--width", args.size.width), ("--height", args.size.height)])?;
    if let Some(file) = &args.prompt_file {
        for job in &jobs {
            step.check([("width", job.width), ("height", job.height)])
                .map_err(|e| Error::bad_file(file, format!("line {}: {e}", job.line)))?;
        }
    }
    let runtime = Runtime::with_options(args.ep, ep_options, ort_lib.as_deref())?;
    let mut pipe = Pipeline::load(&runtime, dir)?;
    let several = jobs.len() > 1;
    // Prompt j starts from seed + j unless its line sets one, so that no two prompts share their noise.
    let seed = args.seed.unwrap_or_else(random_seed);
    for (j, job) in jobs.into_iter().enumerate() {
        let line = job.line;
        let opts = GenerateOptions {
            prompt: job.prompt,
            negative_prompt: job.negative_prompt.or_else(|| args.negative_prompt.clone()),
            steps: job.steps.or(args.steps),
            guidance: args.guidance,
            seed: job.seed.unwrap_or(seed.wrapping_add(j as u64)),
            width: job.width.or(args.size.width),
            height: job.height.or(args.size.height),
            scheduler: args.size.scheduler,
            scheduler_config: args.scheduler_config.clone(),
            latents: args.latents.clone(),
            batch_size: args.num_images,
            no_resolution_binning: args.no_resolution_binning,
            image: args.image.clone(),
            mask: args.mask.clone(),
            strength: args.strength,
        };
        let out = if several { pipeline::output::indexed(&args.out, j) } else { args.out.clone() };
        let latents =
            args.save_latents.as_ref().map(|p| if several { pipeline::output::indexed(p, j) } else { p.clone() });
        generate_one(&mut pipe, &opts, &args, &out, latents.as_deref()).map_err(|e| match &args.prompt_file {
            Some(file) => e.in_context(format!("{} line {line}", file.display())),
            None => e,
        })?;
    }
    Ok(())
}

/// One prompt: generate, write the images (with how they were made) and latents, report.
fn generate_one(
    pipe: &mut Pipeline,
    opts: &GenerateOptions,
    args: &GenerateArgs,
    out_path: &Path,
    save_latents: Option<&Path>,
) -> Result<()> {
    pipe.resolve_size(opts)?;
    if let Some(warning) = pipe.steps_warning(opts)? {
        eprintln!("warning: {warning}");
    }

    let bar = progress("{msg} [{bar:30}] {pos}/{len} steps, {elapsed} ({per_sec})");
    // The first frame shows 0/N, not a full bar at 0/0.
    bar.set_length(opts.steps.unwrap_or(pipe.dir().kind.defaults().steps) as u64);
    bar.set_message("denoising");
    let result = pipe.generate(opts, &mut |i, n| {
        bar.set_length(n as u64);
        bar.set_position(i as u64);
    });
    bar.finish_and_clear();
    let out = result?;
    for w in &out.warnings {
        eprintln!("warning: {w}");
    }
    let info = pipeline::output::RunInfo {
        model: pipe.dir().root.display().to_string(),
        profile: pipe.dir().manifest().ok().flatten().map_or_else(|| "export".into(), |m| m.profile),
        ep: args.ep.to_string(),
    };
    let written = pipeline::output::save(&out, opts, &info, out_path, save_latents)?;
    if args.json {
        println!("{}", pipeline::output::summary_json(&out, opts, &written, save_latents));
    } else {
        println!("{}", pipeline::output::summary_line(&out, opts, &written));
    }
    Ok(())
}

/// An output folder: created with its missing parents inside the current folder; elsewhere its parent must
/// exist (a typo in an absolute path should not create folders up from the filesystem root).
fn check_out_dir(out: &Path) -> Result<()> {
    let cwd = std::env::current_dir().map_err(|e| Error::io(".", "cannot read the current folder", e))?;
    let abs = if out.is_absolute() { out.to_path_buf() } else { cwd.join(out) };
    match abs.parent() {
        Some(parent) if !parent.is_dir() && !abs.starts_with(&cwd) => Err(Error::bad_file(
            out,
            format!(
                "cannot write here: folder {} does not exist (outside the current folder dfast creates no missing \
                 parents; create it first)",
                parent.display()
            ),
        )),
        _ => Ok(()),
    }
}

/// Fails early when a file cannot be created there (missing folder, read-only place).
fn check_writable(path: &Path) -> Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
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
