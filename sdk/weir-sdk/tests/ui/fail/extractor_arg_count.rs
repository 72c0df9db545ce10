#[weir_sdk::extractor]
fn two(config: &(), event: &weir_sdk::Event<'_>) -> weir_sdk::Result<()> {
    let _ = (config, event);
    Ok(())
}

fn main() {}
