//! Times reading an image folder as `reflow prune --preset imagenet` reads it: decode,
//! `convert("RGB")`, `Resize(256)`, `CenterCrop(224)`, `ToTensor` + `Normalize`, a
//! batch at a time on every core, and each step alone on one thread.
//! `scripts/bench_images.py` runs it next to Pillow + torchvision on the same files.
//!
//! ```sh
//! cargo run --release --features image --example bench_images -- DIR [ROUNDS]
//! ```

use reflow::io::{read_image, EvalTransform, ImageFolder, ImageSource, Normalization};
use std::time::Instant;

fn main() -> reflow::Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        eprintln!("usage: bench_images DIR [ROUNDS]  (DIR in ImageFolder layout)");
        std::process::exit(2);
    };
    let rounds: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(3);
    let transform = EvalTransform::imagenet();
    let set = ImageFolder::open(&dir, 3, transform)?;
    let all: Vec<usize> = (0..set.len()).collect();
    let norm = Normalization::imagenet();
    let per_image = |secs: f64| secs / set.len() as f64 * 1e3;

    let _ = set.tensor(&all[..all.len().min(8)], &norm)?; // warm the file cache
    let start = Instant::now();
    for _ in 0..rounds {
        for batch in all.chunks(256) {
            let _ = set.tensor(batch, &norm)?;
        }
    }
    let batches = per_image(start.elapsed().as_secs_f64() / rounds as f64);

    let single = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let (decode, resize, whole) = single.install(|| -> reflow::Result<(f64, f64, f64)> {
        let start = Instant::now();
        let images = set
            .paths()
            .iter()
            .map(|p| read_image(p, 3))
            .collect::<reflow::Result<Vec<_>>>()?;
        let decode = per_image(start.elapsed().as_secs_f64());
        let start = Instant::now();
        for image in &images {
            let _ = transform.apply(image)?;
        }
        let resize = per_image(start.elapsed().as_secs_f64());
        let start = Instant::now();
        for batch in all.chunks(256) {
            let _ = set.tensor(batch, &norm)?;
        }
        Ok((decode, resize, per_image(start.elapsed().as_secs_f64())))
    })?;
    println!(
        "reflow: {} images; {:.2} ms/image in batches on {} threads; one thread: {:.2} ms/image, decode + convert {:.2}, resize + crop {:.2}",
        set.len(),
        batches,
        rayon::current_num_threads(),
        whole,
        decode,
        resize
    );
    Ok(())
}
