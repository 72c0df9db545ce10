use weir_sdk::{Events, Operator, Output, Result};

struct Echo;

#[weir_sdk::operator]
impl Operator for Echo {
    type Config = serde_json::Value;
    fn open(_c: serde_json::Value) -> Result<Self> {
        Ok(Echo)
    }
    fn process(&mut self, events: &Events<'_>, out: &mut Output) -> Result<()> {
        for e in events.iter() {
            out.emit(e.key(), e.ts(), e.inputs())?;
        }
        Ok(())
    }
}

fn main() {}
