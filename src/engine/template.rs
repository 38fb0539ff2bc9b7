//! Chat templates: the Jinja template a GGUF carries (`tokenizer.chat_template`), rendered the way
//! Hugging Face's `apply_chat_template` renders it (trim_blocks, lstrip_blocks, Python string methods),
//! so a default system prompt or other template logic comes out as the model was trained on.

use minijinja::{context, Environment, Error, ErrorKind};

use crate::api::Message;

const TEMPLATE_NAME: &str = "chat";

/// A compiled chat template with the special-token strings it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source`; `bos_token` and `eos_token` are the texts the template sees under those names.
    pub fn new(source: &str, bos_token: String, eos_token: String) -> Result<Self, Error> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())?;
        Ok(ChatTemplate {
            env,
            bos_token,
            eos_token,
        })
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends where the assistant's reply begins.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, Error> {
        self.env.get_template(TEMPLATE_NAME)?.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        })
    }
}

fn raise_exception(message: String) -> Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// Templates that print today's date get a fixed one, so a score does not change at midnight.
fn strftime_now(_format: String) -> String {
    "26 Jul 2024".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML_WITH_DEFAULT_SYSTEM: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nDefault<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    fn user(text: &str) -> Message {
        Message {
            role: "user".into(),
            content: text.into(),
        }
    }

    #[test]
    fn renders_chatml_with_generation_prompt() {
        let t =
            ChatTemplate::new(CHATML_WITH_DEFAULT_SYSTEM, String::new(), String::new()).unwrap();
        let text = t.render(&[user("Hi")], true).unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nDefault<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_string_methods_and_exceptions_work() {
        let source = "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}{{ messages[0].content.strip() }}";
        let t = ChatTemplate::new(source, String::new(), String::new()).unwrap();
        assert_eq!(t.render(&[user("  hi  ")], false).unwrap(), "hi");
        let err = t
            .render(
                &[Message {
                    role: "assistant".into(),
                    content: "x".into(),
                }],
                false,
            )
            .unwrap_err();
        assert!(err.to_string().contains("first must be user"), "{err}");
    }

    #[test]
    fn broken_templates_fail_to_compile() {
        assert!(ChatTemplate::new("{% for %}", String::new(), String::new()).is_err());
    }
}
