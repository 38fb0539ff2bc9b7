//! `endorm rerank`: rank candidate answers to a prompt and print a table.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use endorm::api::{Contrast, Format, ScoreRequest};
use endorm::engine::Scorer;
use endorm::paths;
use endorm::reward::{Aggregate, Recipe};

use crate::model::ModelArgs;

#[derive(Args)]
#[command(
    after_help = "Example:\n  endorm rerank --prompt \"What is the capital of France?\" \"Paris.\" \"Berlin.\""
)]
pub struct RerankArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt (chat: the user's message; --raw: the text the candidates continue).
    #[arg(long, short)]
    pub prompt: String,
    /// The candidate answers.
    #[arg(required = true)]
    pub candidates: Vec<String>,
    /// Raw text instead of the chat template.
    #[arg(long)]
    pub raw: bool,
    /// Principle (system message) that says what a good answer is.
    #[arg(long)]
    pub principle: Option<String>,
    /// Score that ranks: endo, endo_mean, logprob, logprob_mean or endo_lc.
    #[arg(long, default_value = "endo")]
    pub aggregate: Aggregate,
    /// Combine the score with the candidates' agreement with each other, at this weight
    /// (`consensus` in API.md: for many sampled answers).
    #[arg(long, value_name = "W")]
    pub consensus: Option<f64>,
    /// Subtract the same score after a neutral context (`contrast: "neutral"` in API.md).
    #[arg(long)]
    pub neutral: bool,
    /// Add the reviewer term, log p(prompt | candidate) (`reviewer` in API.md).
    #[arg(long)]
    pub reviewer: bool,
    /// Also print each token's reward.
    #[arg(long)]
    pub tokens: bool,
}

/// Runs `endorm rerank`.
pub fn run(args: RerankArgs) -> Result<ExitCode> {
    let (model, context) = args.model.load()?;
    let mut scorer = Scorer::new(&model, context)?;
    let request = ScoreRequest {
        format: Some(if args.raw { Format::Raw } else { Format::Chat }),
        prompt: Some(args.prompt),
        principle: args.principle,
        candidates: args.candidates,
        aggregate: args.aggregate,
        return_tokens: args.tokens,
        consensus: args.consensus,
        contrast: args.neutral.then_some(Contrast::Neutral),
        reviewer: args.reviewer,
        ..ScoreRequest::default()
    };
    let id = paths::model_id(&model.meta().path);
    let response = scorer.score_request(&id, &request, None)?;
    // The ranking column is named by the score it holds (the aggregate and its terms, as
    // `endorm eval` names the same score); the sums it is not follow.
    let recipe = Recipe {
        aggregate: args.aggregate,
        neutral: args.neutral,
        reviewer: args.reviewer,
        reference: false,
    };
    let mut score_name = recipe.name();
    if args.consensus.is_some() {
        score_name.push_str("+consensus");
    }
    let sums: Vec<Aggregate> = [Aggregate::Endo, Aggregate::Logprob]
        .into_iter()
        .filter(|&a| a.name() != score_name)
        .collect();
    let width = score_name.len().max(10);
    let mut header = format!("{:>4}  {score_name:>width$}", "rank");
    for aggregate in &sums {
        header.push_str(&format!("  {:>10}", aggregate.name()));
    }
    println!("{header}  {:>6}  candidate", "tokens");
    for &index in &response.order {
        let r = &response.results[index];
        let mut line = format!("{:>4}  {:>width$.3}", r.rank, r.score);
        for aggregate in &sums {
            let value = match aggregate {
                Aggregate::Endo => r.endo,
                _ => r.logprob,
            };
            line.push_str(&format!("  {value:>10.3}"));
        }
        println!(
            "{line}  {:>6}  {}",
            r.n_tokens,
            one_line(&request.candidates[index], 60)
        );
        let indent = line.chars().count() + 8;
        for token in r.tokens.iter().flatten() {
            println!("{:>indent$.3}  {:?}", token.reward, token.text);
        }
    }
    println!("scores compare only within this table ({score_name} on {id})");
    Ok(ExitCode::SUCCESS)
}

fn one_line(text: &str, width: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match flat.char_indices().nth(width) {
        Some((cut, _)) => format!("{}…", &flat[..cut]),
        None => flat,
    }
}
