//! Writes the seed corpus (`ferrolog_fuzz::seeds`) to `corpus/<target>/seed-*`, replacing the
//! seeds already there. Run after changing a seed or an encoding:
//! `cargo run --manifest-path fuzz/Cargo.toml --example write_corpus`.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut total_bytes = 0;
    for (target, name, bytes) in ferrolog_fuzz::seeds::all() {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(&name), &bytes)?;
        total_bytes += bytes.len();
        println!("{target}/{name}: {} bytes", bytes.len());
    }
    println!("{total_bytes} bytes in all");
    Ok(())
}
