struct M;

#[weir_sdk::model]
impl M {
    fn predict(&self, row: &[f64]) -> f64 {
        row[0]
    }
}

fn main() {}
