struct Op<T>(T);

#[weir_sdk::operator]
impl<T: 'static> weir_sdk::Operator for Op<T> {
    type Config = ();
    fn open(_c: ()) -> weir_sdk::Result<Self> {
        unimplemented!()
    }
}

fn main() {}
