"""A tiny seeded Llama (3 blocks, vocabulary 97) for the language-model tests and their subprocesses."""
import torch
import transformers


def tiny(seed=0, vocab=97, hidden=32, layers=3):
    with torch.random.fork_rng(devices=[]):  # transformers initialises from the global RNG: leave it as found
        torch.manual_seed(seed)
        cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=48,
                                       num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                       max_position_embeddings=64, tie_word_embeddings=True, attn_implementation="eager")
        return transformers.LlamaForCausalLM(cfg).eval()


def char_tokenizer():
    """A 96-token character tokenizer built in code (no download): printable ASCII and [UNK]."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    vocab = {chr(i): i - 32 for i in range(32, 127)} | {"[UNK]": 95}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), "isolated")
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]")
