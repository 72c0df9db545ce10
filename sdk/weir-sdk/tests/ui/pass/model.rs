struct Constant(f64);

#[weir_sdk::model]
impl weir_sdk::Model for Constant {
    type Config = f64;
    fn new(c: f64) -> weir_sdk::Result<Self> {
        Ok(Constant(c))
    }
    fn predict(&self, _row: &[f64]) -> weir_sdk::Result<f64> {
        Ok(self.0)
    }
}

fn main() {}
