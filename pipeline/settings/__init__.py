"""The settings object (``model``), where its values come from and where they are saved
(``sources``), its field messages in Japanese and English (``messages``) and the default
prompt texts (``default_prompts``)."""
