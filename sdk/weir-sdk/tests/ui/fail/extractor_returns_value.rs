#[weir_sdk::extractor]
fn f(config: &(), event: &weir_sdk::Event<'_>, out: &mut Vec<f64>) -> f64 {
    let _ = (config, event, out);
    0.0
}

fn main() {}
