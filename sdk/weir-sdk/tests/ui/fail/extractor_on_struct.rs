#[weir_sdk::extractor]
struct NotAFunction;

fn main() {}
