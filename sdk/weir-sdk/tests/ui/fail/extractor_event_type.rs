#[weir_sdk::extractor]
fn f(config: &(), event: &[f64], out: &mut Vec<f64>) -> weir_sdk::Result<()> {
    let _ = (config, event, out);
    Ok(())
}

fn main() {}
