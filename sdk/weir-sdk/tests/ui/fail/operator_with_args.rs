struct Op;

#[weir_sdk::operator(stateful = true)]
impl weir_sdk::Operator for Op {
    type Config = ();
    fn open(_c: ()) -> weir_sdk::Result<Self> {
        Ok(Op)
    }
}

fn main() {}
