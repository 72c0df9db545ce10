use serde::Deserialize;

#[derive(Deserialize)]
struct Config {
    scale: f64,
}

#[weir_sdk::extractor]
fn scale(config: &Config, event: &weir_sdk::Event<'_>, out: &mut Vec<f64>) -> weir_sdk::Result<()> {
    out.extend(event.inputs().iter().map(|x| x * config.scale));
    Ok(())
}

fn main() {}
