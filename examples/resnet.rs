//! The bundled demonstration: a ResNet-20 trained on Fashion-MNIST, pruned one-shot by
//! magnitude at increasing sparsity, then recalibrated with REFLOW.
//!
//! ```sh
//! cargo run --release --example resnet
//! ```
//!
//! It needs no argument and nothing but the files in `assets/fashion-mnist/`. It prints
//! a table of top-1 accuracy (dense, pruned, after REFLOW) and of the signal metric at
//! the last batch-norm layer, and writes two plots (SVG and PNG) to the folder it names.
//! Flags change the defaults; `--help` lists them.

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use plotters::coord::{CoordTranslate, Shift};
use plotters::prelude::*;
use reflow::prelude::*;
use reflow::protocol::{Evaluation, Protocol, Run};
use reflow::trust::Repair;
use std::path::PathBuf;
use std::process::ExitCode;

/// A progress bar on stderr for `steps` evaluations.
fn progress_bar(steps: u64) -> ProgressBar {
    let bar = ProgressBar::new(steps);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .expect("a valid template"),
    );
    bar
}

/// Fashion-MNIST's training-set statistics.
const MEAN: f32 = 0.2860;
const STD: f32 = 0.3530;

/// Draws one figure as `<path>.svg` and `<path>.png` with `draw(&area)`.
macro_rules! svg_and_png {
    ($path:expr, $draw:expr) => {{
        let svg = $path.with_extension("svg");
        let area = SVGBackend::new(&svg, SIZE).into_drawing_area();
        $draw(&area)?;
        area.present()?;
        let png = $path.with_extension("png");
        let area = BitMapBackend::new(&png, SIZE).into_drawing_area();
        $draw(&area)?;
        area.present()?;
    }};
}

const SIZE: (u32, u32) = (720, 480);

/// `(x, y)` points of a line.
type Points = Vec<(f64, f64)>;

/// Prune a trained ResNet-20 one-shot and recover it with REFLOW.
#[derive(Parser, Debug)]
#[command(about)]
struct Args {
    /// Sparsities, comma-separated, each in [0, 1).
    #[arg(
        long,
        default_value = "0.5,0.6,0.7,0.8,0.9,0.95",
        value_delimiter = ','
    )]
    sparsity: Vec<f64>,
    /// Calibration images (the first of the bundled 2,048 training images).
    #[arg(long, default_value_t = 1024)]
    calib_count: usize,
    /// Calibration batch size.
    #[arg(long, default_value_t = 128)]
    calib_batch: usize,
    /// Evaluate on the first N test images (all 10,000 by default).
    #[arg(long)]
    test_count: Option<usize>,
    /// Test images used for the signal metric.
    #[arg(long, default_value_t = 1000)]
    signal_images: usize,
    /// The sparsity whose per-layer signal is plotted.
    #[arg(long, default_value_t = 0.9)]
    plot_sparsity: f64,
    /// Folder of the bundled model and data.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/fashion-mnist"))]
    assets: PathBuf,
    /// Folder for the plots.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/target/reflow-resnet-example"))]
    out: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let file = |name: &str| args.assets.join(name);
    let mut net = ResNet::load(file("resnet20_fmnist.safetensors"))?;
    let mut test = Dataset::new(
        IdxImages::read(file("t10k-images-idx3-ubyte.gz"))?,
        IdxLabels::read(file("t10k-labels-idx1-ubyte.gz"))?,
    )?;
    if let Some(n) = args.test_count {
        let labels = IdxLabels::from_vec(test.labels().as_slice()[..n.min(test.len())].to_vec());
        test = Dataset::new(test.images().first(labels.len())?, labels)?;
    }
    let calib_images = IdxImages::read(file("calib-images-idx3-ubyte.gz"))?;
    let norm = Normalization::new(vec![MEAN], vec![STD])?;
    let calibration = ImageBatches::new(&calib_images, args.calib_count, args.calib_batch, &norm)?;
    let pruners = args
        .sparsity
        .iter()
        .map(|&s| {
            let pruner = MagnitudePruner::new(s);
            pruner.plan().validate().map(|_| pruner)
        })
        .collect::<reflow::Result<Vec<_>>>()?;

    println!(
        "ResNet-20 (Fashion-MNIST, {} parameters): global magnitude pruning, REFLOW on {} \
         training images (batches of {}), top-1 on {} test images",
        count_parameters(&net),
        args.calib_count,
        args.calib_batch,
        test.len()
    );
    let protocol = Protocol {
        test: test.images(),
        labels: Some(test.labels().as_slice()),
        norm: &norm,
        calibration: &calibration,
        signal_images: args.signal_images.min(test.len()),
        repair: Repair::reflow(Reflow::cumulative()),
        shard: reflow::protocol::Shard::WHOLE,
    };
    let progress = progress_bar(1 + 2 * pruners.len() as u64);
    progress.set_message("dense model");
    let started = std::time::Instant::now();
    let dense_state = StateDict::from_layer(&net);
    let dense = protocol.dense(&net)?;
    progress.inc(1);
    let mut runs = Vec::new();
    for (&s, pruner) in args.sparsity.iter().zip(pruners) {
        progress.set_message(format!("sparsity {s}"));
        runs.push(
            protocol.run(&mut net, &dense_state, &dense, s, pruner, &mut || {
                progress.inc(1)
            })?,
        );
    }
    progress.finish_and_clear();

    print_table(&dense.evaluation, &runs);
    println!(
        "signal: mean over channels of the variance of the last batch-norm output \
         (layer3.2.bn2), relative to the dense network; {} test images. {:.1} s in all.",
        protocol.signal_images,
        started.elapsed().as_secs_f64()
    );

    std::fs::create_dir_all(&args.out)?;
    let font: &'static [u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| "the bundled font is unreadable")?;
    let accuracy = args.out.join("accuracy");
    svg_and_png!(accuracy, |area| plot_accuracy(
        area,
        &dense.evaluation,
        &runs
    ));
    let at = runs
        .iter()
        .min_by(|a, b| {
            (a.sparsity - args.plot_sparsity)
                .abs()
                .total_cmp(&(b.sparsity - args.plot_sparsity).abs())
        })
        .ok_or("no sparsity given")?;
    let signal = args.out.join("signal");
    svg_and_png!(signal, |area| plot_signal(area, &dense.evaluation, at));
    println!("plots: {}", args.out.display());
    for p in [&accuracy, &signal] {
        println!("  {}.svg, {}.png", p.display(), p.display());
    }
    Ok(())
}

fn print_table(dense: &Evaluation, runs: &[Run]) {
    println!();
    println!(
        "{:>8} | {:>7} {:>7} {:>7} | {:>15} {:>15}",
        "sparsity", "dense", "pruned", "REFLOW", "signal pruned/d", "signal REFLOW/d"
    );
    println!("{}", "-".repeat(71));
    for run in runs {
        println!(
            "{:>8.2} | {:>7.4} {:>7.4} {:>7.4} | {:>15.4} {:>15.4}",
            run.sparsity,
            dense.top1(),
            run.pruned.top1(),
            run.repaired.top1(),
            run.pruned.signal.last_ratio_to(&dense.signal),
            run.repaired.signal.last_ratio_to(&dense.signal),
        );
    }
    println!();
}

type PlotResult = Result<(), Box<dyn std::error::Error>>;

/// The legend, in the lower left corner.
fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
) -> PlotResult
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    Ok(())
}

/// Top-1 against sparsity: dense, pruned and after REFLOW.
fn plot_accuracy<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    dense: &Evaluation,
    runs: &[Run],
) -> PlotResult
where
    DB::ErrorType: 'static,
{
    area.fill(&WHITE)?;
    let (lo, hi) = runs.iter().fold((1.0f64, 0.0f64), |(lo, hi), r| {
        (lo.min(r.sparsity), hi.max(r.sparsity))
    });
    let mut chart = ChartBuilder::on(area)
        .caption(
            "ResNet-20 on Fashion-MNIST: one-shot magnitude pruning",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((lo - 0.02)..(hi + 0.02), 0.0f64..1.0)?;
    chart
        .configure_mesh()
        .x_desc("sparsity (fraction of conv and fc weights removed)")
        .y_desc("top-1 accuracy")
        .label_style(("sans-serif", 14))
        .draw()?;
    let series: [(&str, RGBColor, Points); 3] = [
        (
            "dense",
            BLACK,
            runs.iter().map(|r| (r.sparsity, dense.top1())).collect(),
        ),
        (
            "pruned",
            RED,
            runs.iter().map(|r| (r.sparsity, r.pruned.top1())).collect(),
        ),
        (
            "pruned + REFLOW",
            BLUE,
            runs.iter()
                .map(|r| (r.sparsity, r.repaired.top1()))
                .collect(),
        ),
    ];
    for (name, color, points) in series {
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 4, color.filled())),
        )?;
    }
    legend(&mut chart)
}

/// The signal metric of every batch-norm layer, by depth, relative to the dense
/// network: pruned and after REFLOW, at one sparsity.
fn plot_signal<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    dense: &Evaluation,
    run: &Run,
) -> PlotResult
where
    DB::ErrorType: 'static,
{
    area.fill(&WHITE)?;
    let pruned = run.pruned.signal.ratio_to(&dense.signal);
    let reflow = run.repaired.signal.ratio_to(&dense.signal);
    let points = |s: &Signal| -> Points {
        s.layers
            .iter()
            .enumerate()
            .map(|(i, (_, v))| (i as f64, v.max(1e-6)))
            .collect()
    };
    let all: Vec<f64> = points(&pruned)
        .into_iter()
        .chain(points(&reflow))
        .map(|p| p.1)
        .collect();
    let lo = all.iter().copied().fold(1.0f64, f64::min) / 2.0;
    let hi = all.iter().copied().fold(1.0f64, f64::max) * 2.0;
    let layers = pruned.layers.len().max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!(
                "Signal collapse at sparsity {}: BN output variance / dense",
                run.sparsity
            ),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5..(layers - 0.5), (lo..hi).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("batch-norm layer, by depth (bn1 … layer3.2.bn2)")
        .x_label_formatter(&|x| format!("{}", x.round() as i64))
        .y_desc("signal / dense signal")
        .label_style(("sans-serif", 14))
        .draw()?;
    chart.draw_series(LineSeries::new(
        vec![(-0.5, 1.0), (layers - 0.5, 1.0)],
        BLACK.mix(0.5),
    ))?;
    for (name, color, s) in [("pruned", RED, &pruned), ("pruned + REFLOW", BLUE, &reflow)] {
        chart
            .draw_series(LineSeries::new(points(s), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(
            points(s)
                .into_iter()
                .map(|p| Circle::new(p, 3, color.filled())),
        )?;
    }
    legend(&mut chart)
}
