#[weir_sdk::model]
fn predict(row: &[f64]) -> f64 {
    row[0]
}

fn main() {}
