struct M;

#[weir_sdk::model]
impl weir_sdk::Operator for M {
    type Config = ();
    fn open(_c: ()) -> weir_sdk::Result<Self> {
        Ok(M)
    }
}

fn main() {}
