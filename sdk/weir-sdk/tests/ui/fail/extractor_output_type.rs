#[weir_sdk::extractor]
fn f(config: &(), event: &weir_sdk::Event<'_>, out: &mut [f64]) -> weir_sdk::Result<()> {
    let _ = (config, event, out);
    Ok(())
}

fn main() {}
