//! `tugboat`: the Tugboat command line for operators.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use tugboat_ctl::{images, kubeconfig, nodes, token};

/// Tugboat command line.
#[derive(Parser, Debug)]
#[command(name = "tugboat", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Ship operations through the apiserver: start, stop, restart, pause, unpause, logs, console.
    #[command(flatten)]
    Ship(tugboat_ctl::shipctl::ShipCommand),
    /// Join tokens for new members.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Members of the cluster.
    Node {
        #[command(subcommand)]
        action: NodeAction,
    },
    /// Print a kubeconfig with a freshly issued client certificate (needs the CA key).
    Kubeconfig {
        /// Data dir of a member holding `pki/ca.key`.
        #[arg(long, default_value = "/var/lib/tugboat")]
        data_dir: PathBuf,
        /// API server URL (default: the one in DATA/admin.kubeconfig, else https://127.0.0.1:6443).
        #[arg(long)]
        server: Option<String>,
        /// User name (the certificate's CN).
        #[arg(long, default_value = "admin")]
        user: String,
        /// Group (the certificate's O), repeatable; default system:masters for user admin.
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Certificate lifetime (e.g. 12h, 30d).
        #[arg(long, default_value = "365d")]
        ttl: String,
    },
    /// Build a VM image from an Imagefile and a context directory.
    Build(images::BuildArgs),
    /// Push a local VM image to its registry.
    Push(images::PushArgs),
    /// Pull a VM image from a registry.
    Pull(images::PullArgs),
    /// VM images on this host: ls, rm, tag, save, load.
    Image {
        #[command(subcommand)]
        action: images::ImageCommand,
    },
}

#[derive(Subcommand, Debug)]
enum NodeAction {
    /// List members with role, addresses, raft position and health.
    List {
        /// Data dir of the local member.
        #[arg(long, default_value = "/var/lib/tugboat")]
        data_dir: PathBuf,
    },
    /// Remove a member (or worker) from the cluster by name.
    Remove {
        /// The node's name.
        name: String,
        /// Data dir of the local member.
        #[arg(long, default_value = "/var/lib/tugboat")]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum TokenAction {
    /// Create a token and print it.
    Create {
        /// How long the token stays valid (e.g. 30m, 1h, 2d).
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// How many joins it allows (default: unlimited until it expires).
        #[arg(long)]
        uses: Option<u32>,
        /// Data dir of the local member.
        #[arg(long, default_value = "/var/lib/tugboat")]
        data_dir: PathBuf,
    },
    /// List tokens.
    List {
        /// Data dir of the local member.
        #[arg(long, default_value = "/var/lib/tugboat")]
        data_dir: PathBuf,
    },
    /// Revoke a token by id.
    Revoke {
        /// Token id (the second part of the token).
        id: String,
        /// Data dir of the local member.
        #[arg(long, default_value = "/var/lib/tugboat")]
        data_dir: PathBuf,
    },
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Ship(cmd) => tugboat_ctl::shipctl::run(cmd).await?,
        Command::Build(args) => images::build(args).await?,
        Command::Push(args) => images::push(args).await?,
        Command::Pull(args) => images::pull(args).await?,
        Command::Image { action } => images::image(action).await?,
        Command::Node {
            action: NodeAction::List { data_dir },
        } => print!("{}", nodes::render(&nodes::list(&data_dir).await?)),
        Command::Node {
            action: NodeAction::Remove { name, data_dir },
        } => println!("{}", nodes::remove(&data_dir, &name).await?),
        Command::Kubeconfig {
            data_dir,
            server,
            user,
            mut groups,
            ttl,
        } => {
            if groups.is_empty() && user == "admin" {
                groups.push(kubeconfig::MASTERS_GROUP.to_string());
            }
            let ttl = token::parse_duration(&ttl)?;
            print!(
                "{}",
                kubeconfig::issue(&data_dir, server.as_deref(), &user, &groups, ttl)?
            );
        }
        Command::Token { action } => match action {
            TokenAction::Create {
                ttl,
                uses,
                data_dir,
            } => {
                let ttl = token::parse_duration(&ttl)?;
                println!("{}", token::create(&data_dir, ttl, uses).await?);
            }
            TokenAction::List { data_dir } => {
                print!("{}", token::render(&token::list(&data_dir).await?))
            }
            TokenAction::Revoke { id, data_dir } => {
                token::revoke(&data_dir, &id).await?;
                println!("revoked {id}");
            }
        },
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        // Another provider is installed already; tonic uses whichever is there.
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tugboat: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tugboat: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
