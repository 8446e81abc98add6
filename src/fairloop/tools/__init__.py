"""One module per agent capability: plain typed functions first, a thin LangChain tool on top later."""
