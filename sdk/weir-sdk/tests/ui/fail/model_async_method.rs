struct M;

#[weir_sdk::model]
impl weir_sdk::Model for M {
    type Config = ();
    fn new(_c: ()) -> weir_sdk::Result<Self> {
        Ok(M)
    }
    async fn predict(&self, _row: &[f64]) -> weir_sdk::Result<f64> {
        Ok(0.0)
    }
}

fn main() {}
