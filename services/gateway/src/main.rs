fn main() -> std::process::ExitCode {
    shop_runtime::run::<gateway::Gateway>()
}
