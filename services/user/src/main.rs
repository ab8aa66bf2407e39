fn main() -> std::process::ExitCode {
    shop_runtime::run::<user_service::UserService>()
}
