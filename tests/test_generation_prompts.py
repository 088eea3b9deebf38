import dataclasses

from pper.generation import build_prompt, code_from_answer, extract_program
from pper.generation.prompts import COMPLETION_STOPS, stop_index
from pper.tasks import load_tasks


def test_completion_prompts_end_at_the_code_without_trailing_whitespace():
    task = load_tasks("humaneval", limit=1)[0]
    prompt = build_prompt(task)
    assert task.prompt.endswith('"""\n') and prompt.text == task.prompt.rstrip() and prompt.text.endswith('"""')
    assert prompt.stops == COMPLETION_STOPS
    program = extract_program(prompt, "\n    return True\n\n\n")
    assert program == prompt.text + "\n    return True\n"  # the body joined to its signature


class _ChatTokenizer:
    chat_template = "stub"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert not tokenize and add_generation_prompt
        return "<user>" + messages[0]["content"] + "<assistant>"


def test_instruction_prompts_show_the_tests_as_in_the_mbpp_paper(mbpp_path, apps_path, codecontests_path):
    import warnings

    task = load_tasks(f"mbpp:{mbpp_path}", split="test", limit=1)[0]
    prompt = build_prompt(task, _ChatTokenizer())
    assert prompt.text.startswith("<user>You are an expert Python programmer, and here is your task: Write a python")
    assert "Your code should pass these tests:\n\nassert remove_Occ" in prompt.text and prompt.stops == ()
    assert build_prompt(task).text.endswith("```python block.\n")  # no chat template: plain text
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        apps = {t.id: t for t in load_tasks(f"apps:{apps_path}")}
        cc = load_tasks(f"codecontests:{codecontests_path}")[0]
    assert "function named `reverse_words`" in build_prompt(apps["apps/9003"]).text
    assert "def reverse_words(s):" in build_prompt(apps["apps/9003"]).text
    assert "reads from standard input" in build_prompt(apps["apps/9001"]).text
    assert "standard input" in build_prompt(cc).text


def test_code_is_extracted_from_chat_answers():
    fenced = "Sure! Here it is:\n```python\ndef f(x):\n    return x\n```\nThis returns x."
    assert code_from_answer(fenced) == "def f(x):\n    return x\n"
    assert code_from_answer("```\nprint(1)\n```") == "print(1)\n"
    assert code_from_answer("Answer:\n```python\ndef f():\n    return 2") == "def f():\n    return 2\n"  # unclosed
    listed = "1. The code:\n   ```python\ndef f(x):\n    return x + 1\n   ```\n2. It adds one."  # fence indented
    assert code_from_answer(listed) == "def f(x):\n    return x + 1\n"
    inline = "```python\ndef f(x):\n    return x + 1```\nThat is all."  # the fence closes the last code line
    assert code_from_answer(inline) == "def f(x):\n    return x + 1\n"
    prose = "Here is a function that adds:\n\ndef add(a, b):\n    return a + b\n\nIt works for ints."
    assert code_from_answer(prose) == "def add(a, b):\n    return a + b\n"


def test_stop_index():
    text = "\n    return x\n\ndef other():\n    pass"
    assert text[: stop_index(text, COMPLETION_STOPS)] == "\n    return x\n"
    assert stop_index("\n    return x", COMPLETION_STOPS) is None


def test_code_span_is_where_the_extracted_code_lies():
    from pper.generation.prompts import code_span

    answers = [
        "Sure! Here it is:\n```python\ndef f(x):\n    return x\n```\nThis returns x.",
        "```python\n\n\ndef f():\n    return 2\n\n```",
        "Answer:\n```python\ndef f():\n    return 2",
        "Here is a function that adds:\n\ndef add(a, b):\n    return a + b\n\nIt works for ints.",
        "\n\n  x = 1  \n\n",
        "just prose",
        "```python\n\n```",
    ]
    for answer in answers:
        start, end = code_span(answer)
        assert 0 <= start <= end <= len(answer)
        assert answer[start:end] + "\n" == code_from_answer(answer)
    assert code_span(answers[0]) == (answers[0].index("def"), answers[0].index("\n```\nThis"))


def _ends(pieces):
    return [sum(len(p) for p in pieces[: j + 1]) for j in range(len(pieces))]


def test_program_tokens_are_the_code_without_prose_and_fences():
    import dataclasses

    from pper.generation.prompts import program_span, program_token_range, training_target

    humaneval = load_tasks("humaneval", limit=1)[0]
    chat = build_prompt(dataclasses.replace(humaneval, prompt_style="instruction"))
    answer = "Here:\n```python\ndef f():\n    return 1\n```\nDone."
    pieces = ["Here", ":\n", "```", "python", "\n", "def", " f", "():", "\n   ", " return", " 1", "\n", "```"]
    pieces.append("\nDone.")
    assert "".join(pieces) == answer
    assert program_span(chat, answer) == (answer.index("def"), answer.index("\n```\nDone"))
    assert program_token_range(chat, answer, _ends(pieces)) == (5, 11)  # "def" .. " 1"
    crossing = ["Here:\n```python\nde", "f f():\n    return 1", "\n```\nDone."]  # counts for where it ends
    assert program_token_range(chat, answer, _ends(crossing)) == (0, 2)
    target = training_target(chat, "def f():\n    return 1\n")
    assert target[slice(*program_span(chat, target))] == "def f():\n    return 1"
    assert program_token_range(chat, "```python\n\n```", _ends(["```", "python", "\n", "\n```"])) == (0, 4)  # no code
    completion = build_prompt(humaneval)
    assert program_span(completion, "\n    return 1\n\n") == (0, 15)
    assert program_token_range(completion, "\n    return 1\n\n", [5, 12, 15]) == (0, 3)


def test_a_prefilled_answer_stops_at_the_fence_a_top_level_print_or_a_redefinition(mbpp_path):
    from pper.generation.prompts import PREFILL_STOPS, stops_for_prefix

    prefix = "import re\nasync def g(x):\n    pass\ndef f(a, b):\n    def inner():\n        pass\n    c = a"
    assert stops_for_prefix(prefix) == (*PREFILL_STOPS, "\ndef g(", "\ndef f(")  # not the nested `inner`
    task = load_tasks(f"mbpp:{mbpp_path}", split="test", limit=1)[0]
    prompt = build_prompt(task, _ChatTokenizer(), prefix)
    assert prompt.text.endswith("<assistant>```python\n" + prefix) and prompt.stops == stops_for_prefix(prefix, task)
    assert prompt.stops == stops_for_prefix(prefix)
    completion = "\n    return c + b\n\ndef helper():\n    pass\n\ndef f(a, b):\n    return 0\n"
    cut = completion[: stop_index(completion, prompt.stops)]
    assert cut == "\n    return c + b\n\ndef helper():\n    pass\n"  # a helper is kept, the redefinition is not
    assert extract_program(prompt, cut) == prefix + cut.rstrip("\n") + "\n"
    for tail in ("\n```\nThis works.", "\nprint(f(1, 2))", "\nassert f(1, 2) == 3"):
        assert stop_index("\n    return c + b" + tail, prompt.stops) == len("\n    return c + b")
    assert build_prompt(task, _ChatTokenizer()).stops == ()  # without a prefix the answer's fence ends the code
    assert build_prompt(task, _ChatTokenizer(), prefix, prefill_stops=False).stops == ()  # curriculum.prefill_stops
    # a standard-input script's top-level print and `if __name__` are its own code: only the fence (and a
    # redefinition) end it
    from pper.tasks import StdioCase, StdioTests, Task

    script = Task(id="t/io", prompt="Sum two numbers.", tests=StdioTests((StdioCase("1 2", "3"),)))
    stops = build_prompt(script, _ChatTokenizer(), "def main():\n    a, b = map(int, input().split())").stops
    assert stops == ("\n```", "\ndef main(")
    rest = "\n    print(a + b)\n\nif __name__ == '__main__':\n    main()\n```"
    assert rest[: stop_index(rest, stops)] == rest[: -len("\n```")]


def test_a_chat_template_that_starts_with_a_bos_gives_one_bos_in_sampling_and_training():
    """Llama 3's and Mistral's templates write the begin-of-text token and their tokenizers add one too: a chat prompt
    is tokenized without adding it again, and training sees the prompt ids sampling saw."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    from pper.generation import resolve_model
    from pper.generation.prompts import prompt_ids
    from pper.training.examples import build_example

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("default")[1])
    bos = tokenizer.convert_tokens_to_ids("<|endoftext|>")  # made a begin-of-text token, added to every text
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", bos)]
    )
    tokenizer.chat_template = "{{ '<|endoftext|>' }}" + tokenizer.chat_template
    humaneval = load_tasks("humaneval", limit=1)[0]
    chat = build_prompt(dataclasses.replace(humaneval, prompt_style="instruction"), tokenizer)
    completion = build_prompt(humaneval, tokenizer)
    for prompt in (chat, completion):
        ids = prompt_ids(tokenizer, prompt)
        assert ids[0] == bos and ids[1] != bos  # was [bos, bos, ...] for the chat prompt
        example = build_example(prompt.task, "def f():\n    return 1\n", tokenizer, 4096)
        assert list(example.ids[: example.target_start]) == ids
