"""What the tests share besides fixtures, imported explicitly (``from helpers.dream_loop import ...``):
``dream_loop`` (test variants of the bundled workflow, what the loop wrote, the frame stream),
``browser`` (the graph editor, the pack's sidebar button, a page's console), ``asyncrun`` (a
coroutine on a loop of its own) and ``worktree`` (this working tree as a git repository)."""
