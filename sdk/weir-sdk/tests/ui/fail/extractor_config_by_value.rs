#[weir_sdk::extractor]
fn f(config: u32, event: &weir_sdk::Event<'_>, out: &mut Vec<f64>) -> weir_sdk::Result<()> {
    let _ = (config, event, out);
    Ok(())
}

fn main() {}
