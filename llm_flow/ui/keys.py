"""Names of the values a session keeps in ``st.session_state`` (widget keys among them)."""

MODEL_CHOICE = "model_choice"  # configured model name (selectbox)
CUSTOM_MODEL = "custom_model"  # hub id, folder or .gguf typed by the user (overrides the choice)
DEVICE = "device"
DTYPE = "dtype"
PROMPTS = "prompts"  # the configured prompts plus the ones added in this session
PROMPT_CHOICE = "prompt_choice"  # selectbox over PROMPTS
NEW_PROMPT = "new_prompt"  # text area
PENDING_PROMPT = "pending_prompt"  # a typed prompt waiting to be analysed
ACTIVE = "active"  # the analysis on screen (analysis.Request)
ERROR = "error"  # why the last request was refused
FAILED = "failed"  # that refused request (analysis.Request)
TARGET = "target"  # token position to explain
THRESHOLD = "threshold"
RENORMALIZE = "renormalize"
COMPACT = "compact"  # show only the token columns the route reaches
SELECTED = "selected"  # node name or edge id shown in the side panel
CHART = "route_chart"  # the plotly chart's selection state
LENS_NORMALIZE = "lens_normalize"
TEMPERATURE = "temperature"
HEAD = "head"
NEURON = "neuron"
NEURON_COUNT = "neuron_count"
